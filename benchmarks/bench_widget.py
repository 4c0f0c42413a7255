"""Benchmark of the widget: wire payload sizes, Python payload time, front-end render time.

Usage (from the repository root)::

    python benchmarks/bench_widget.py                        # all models (about a minute on 2 cores)
    python benchmarks/bench_widget.py --json bench_widget.json  # also write the figures + machine info
    python benchmarks/bench_widget.py --models mlp,cnn --repeats 3   # a subset / fewer repeats

What is measured, per model (MLP 784-128-128-10, small CNN 28x28x1 conv32-conv64-dense128,
``keras.applications.ResNet50(weights=None)`` and ``MobileNetV2(weights=None)``, 224x224x3):

* **initial state** -- what a new view receives: the JSON of every synced trait
  (``widget.get_state()`` split with ipywidgets' ``_remove_buffers``; the binary
  parts of the state are counted apart -- there are none: heatmaps do not travel
  in traits) plus the ``heatmaps`` message answering the view's "hello" (JSON
  header + uint8 buffers).  The anywidget assets (``_esm`` + ``_css``, the
  JavaScript and CSS, sent once per widget) are shown apart from the data traits.
* **update** -- after one proposal, accepting the first pending layer: the JSON of
  the traits whose value changed (what ipywidgets sends) + the resent heatmap
  buffers (only the changed ones) + their JSON header.  Requirement: an update for
  a ResNet50-sized model stays under 1 MB (PASS / MISS).  "accept all" (every
  layer changes) is printed as a worst case for information.
* **python payload** -- ``payload.layer_states(session)`` + ``payload.heatmaps(session)``,
  the work of one refresh; median of ``--repeats``.
* **front-end render** -- the shipped bundle ``paoding_widgets/widget/static/widget.js``
  run in node with jsdom (``node_modules/jsdom`` at the repository root): a fake
  anywidget model whose ``get`` returns the widget's current trait values (dumped
  to JSON), ``render({model, el})``, then the "hello" heatmaps message delivered
  through ``msg:custom``; "update" sets the changed traits (one ``change:<trait>``
  event each, as the widget manager fires them) and delivers the resent heatmaps.
  jsdom has no canvas: ``getContext("2d")`` is stubbed with a no-op
  ``putImageData`` and a minimal ``ImageData``, so the colour mapping of every
  heatmap is timed but not the pixel blit or layout/paint.  One untimed warm-up,
  then the median of ``--repeats`` (5) on a fresh element each time.  Without
  node or jsdom only the Python side is timed (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled

import keras  # noqa: E402
import numpy as np  # noqa: E402
from ipywidgets.widgets.widget import _remove_buffers  # noqa: E402

from paoding_widgets.session import PruningSession  # noqa: E402
from paoding_widgets.widget import PruningWidget, payload  # noqa: E402

BUNDLE = ROOT / "paoding_widgets" / "widget" / "static" / "widget.js"
LIMIT = 1_000_000  # bytes: "an update for a ResNet50-sized model stays under 1 MB"
ASSETS = ("_esm", "_css")
DATA_TRAITS = ("layers", "states", "metrics_pending", "settings", "strategies", "metrics", "metrics_history",
               "history", "position",
               "running", "progress", "error", "export_path")


# ---------------------------------------------------------------------- models
def mlp() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10, activation="softmax")], name="mlp")


def cnn() -> Any:
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax")], name="cnn")


def resnet50() -> Any:
    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None)


def mobilenetv2() -> Any:
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(weights=None)


MODELS = {"mlp": ("MLP 784-128-128-10", mlp), "cnn": ("CNN 28x28x1 c32-c64-d128", cnn),
          "resnet50": ("ResNet50 224x224x3", resnet50), "mobilenetv2": ("MobileNetV2 224x224x3", mobilenetv2)}


# ---------------------------------------------------------------------- wire sizes
def wire_json(obj: Any, indent: int | None = None) -> str:
    """``obj`` as the kernel serialises it: strict JSON; on NaN/inf, jupyter_client's ``json_clean`` fallback."""
    seps = (",", ":") if indent is None else None
    try:
        return json.dumps(obj, separators=seps, indent=indent, allow_nan=False, default=str)
    except ValueError:  # what jupyter_client.session.json_packer does (with a DeprecationWarning)
        from jupyter_client.jsonutil import json_clean

        return json.dumps(json_clean(obj), separators=seps, indent=indent, allow_nan=False, default=str)


def jsize(obj: Any) -> int:
    """Bytes of ``obj`` as compact JSON (what the comm carries, before websocket framing)."""
    return len(wire_json(obj).encode())


def nonfinite_traits(widget: PruningWidget) -> list[str]:
    """Synced data traits that are not valid JSON (NaN / inf floats)."""
    bad = []
    for k in DATA_TRAITS:
        try:
            json.dumps(getattr(widget, k), allow_nan=False, default=str)
        except ValueError:
            bad.append(k)
    return bad


class Recorder:
    """Replaces ``widget.send``: keeps (content, buffers) of every custom message."""

    def __init__(self) -> None:
        self.msgs: list[tuple[dict[str, Any], list[bytes]]] = []

    def __call__(self, content: dict[str, Any], buffers: list[Any] | None = None) -> None:
        self.msgs.append((content, [bytes(b) for b in buffers or []]))

    def take(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        out, self.msgs = self.msgs, []
        return out


def act(widget: PruningWidget, action: str, **fields: Any) -> None:
    """An action as the front end sends it; then wait for its metrics (computed in the background)."""
    widget._on_msg(widget, {"type": "action", "action": action, **fields}, [])
    widget.settle(600)
    if widget.error:
        raise RuntimeError(f"action {action!r} refused: {widget.error}")


def messages_size(msgs: list[tuple[dict[str, Any], list[bytes]]], kind: str = "heatmaps") -> dict[str, int]:
    chosen = [(c, b) for c, b in msgs if c.get("type") == kind]
    return {"messages": len(chosen), "json": sum(jsize(c) for c, _ in chosen),
            "buffers": sum(len(x) for _, b in chosen for x in b), "count": sum(len(b) for _, b in chosen)}


def state_parts(widget: PruningWidget) -> tuple[dict[str, Any], int, int]:
    """(JSON-able state, number of binary parts, their bytes) of ``widget.get_state()``."""
    state, _paths, buffers = _remove_buffers(widget.get_state())
    return state, len(buffers), sum(memoryview(b).nbytes for b in buffers)


def trait_values(widget: PruningWidget) -> dict[str, Any]:
    """The data traits as the front end sees them (a JSON round trip)."""
    return json.loads(wire_json({k: getattr(widget, k) for k in DATA_TRAITS}))


def heat_payload(msgs: list[tuple[dict[str, Any], list[bytes]]]) -> list[dict[str, Any]]:
    """Heatmap messages for the node script (buffers as base64)."""
    import base64

    return [{"msg": c, "buffers": [base64.b64encode(x).decode() for x in b]}
            for c, b in msgs if c.get("type") == "heatmaps"]


# ---------------------------------------------------------------------- node + jsdom
NODE_SCRIPT = r"""
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";
import fs from "node:fs";
import { performance } from "node:perf_hooks";

const [root, bundle, dataPath, repeatsArg] = process.argv.slice(2);
const require = createRequire(root + "/package.json");
const { JSDOM, VirtualConsole } = require("jsdom");
const vc = new VirtualConsole();
vc.on("jsdomError", (e) => { if (!String(e.message).includes("Not implemented")) console.error(e.message); });
const dom = new JSDOM("<!doctype html><html><body></body></html>", { pretendToBeVisual: true, virtualConsole: vc });
const w = dom.window;
for (const k of ["window", "document", "Node", "HTMLElement", "Element", "Event", "KeyboardEvent", "MouseEvent"]) {
  globalThis[k] = k === "window" ? w : w[k];
}
// jsdom has no canvas: a 2-D context whose putImageData does nothing, and a minimal ImageData
let painted = 0;
w.HTMLCanvasElement.prototype.getContext = function () { return { putImageData() { painted++; } }; };
globalThis.ImageData = class ImageData {
  constructor(data, width, height) { this.data = data; this.width = width; this.height = height; }
};

const data = JSON.parse(fs.readFileSync(dataPath, "utf8"));
const { default: widget } = await import(pathToFileURL(bundle).href);
const toBuffers = (list) => list.map((b64) => {
  const u8 = Uint8Array.from(Buffer.from(b64, "base64"));
  return new DataView(u8.buffer);   // anywidget hands buffers over as DataViews
});
const heat = (list) => list.map((m) => ({ msg: m.msg, buffers: toBuffers(m.buffers) }));
const hello = heat(data.hello), update = heat(data.update);

function fakeModel(state) {
  const handlers = new Map(), sent = [];
  return {
    sent,
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; },
    save_changes() {},
    send: (msg) => sent.push(msg),
    on: (ev, cb) => { if (!handlers.has(ev)) handlers.set(ev, []); handlers.get(ev).push(cb); },
    off() {},
    fire: (ev, ...args) => (handlers.get(ev) || []).forEach((cb) => cb(...args)),
  };
}

function once() {
  const model = fakeModel(structuredClone(data.state));
  const el = document.createElement("div");
  document.body.append(el);
  painted = 0;
  let t = performance.now();
  widget.render({ model, el });
  const render = performance.now() - t;
  t = performance.now();
  for (const m of hello) model.fire("msg:custom", m.msg, m.buffers);
  const heatmaps = performance.now() - t;
  const paintedInitial = painted;
  const rows = el.querySelectorAll("[role=treeitem]").length;
  t = performance.now();
  for (const [k, v] of Object.entries(data.changed)) { model.set(k, v); model.fire(`change:${k}`); }
  for (const m of update) model.fire("msg:custom", m.msg, m.buffers);
  const upd = performance.now() - t;
  const hellos = model.sent.filter((m) => m.action === "hello").length;
  el.remove();
  return { render, heatmaps, update: upd, rows, painted: paintedInitial, hellos };
}

const repeats = Number(repeatsArg);
const cold = once();
const runs = Array.from({ length: repeats }, once);
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
console.log(JSON.stringify({
  cold,
  render_ms: median(runs.map((r) => r.render)),
  heatmaps_ms: median(runs.map((r) => r.heatmaps)),
  initial_ms: median(runs.map((r) => r.render + r.heatmaps)),
  update_ms: median(runs.map((r) => r.update)),
  rows: runs[0].rows, painted: runs[0].painted, hello_sent: runs[0].hellos,
  changed_traits: Object.keys(data.changed).length,
}));
"""


def node_available() -> str:
    """'' if node + jsdom can run the bundle, else why not."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (ROOT / "node_modules" / "jsdom").is_dir():
        return "node_modules/jsdom is not installed (npm ci)"
    if not BUNDLE.is_file():
        return f"{BUNDLE} is missing"
    return ""


def time_frontend(tmp: Path, name: str, data: dict[str, Any], repeats: int) -> dict[str, Any]:
    script = tmp / "render_bench.mjs"
    if not script.exists():
        script.write_text(NODE_SCRIPT)
    path = tmp / f"{name}.json"
    path.write_text(wire_json(data))
    proc = subprocess.run(["node", str(script), str(ROOT), str(BUNDLE), str(path), str(repeats)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        lines = [ln[:300] for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise RuntimeError(f"node failed ({proc.returncode}): " + "\n".join(lines[-12:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- per model
def median_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_preview_accuracy(model: Any, budget: float, n: int = 512) -> dict[str, Any]:
    """Time until a proposal preview shows the accuracy after accepting: first layer, and all (within ``budget`` s).

    The eval data here are box samples labelled by the model itself -- for timing only (the figure is
    agreement); the widget itself only ever uses the user's eval data.  No FGSM step sizes: the metrics
    thread (which runs first) then only measures accuracy, not robustness, on them.
    """
    from paoding_widgets.engine.evaluate import sample_box

    shape = tuple(model.inputs[0].shape[1:])
    x = sample_box(shape, (0.0, 1.0), n)
    y = np.asarray(model.predict(x, verbose=0, batch_size=64)).argmax(-1)
    session = PruningSession(model, eval_data=(x, y), epsilons=())
    widget = session.widget().settle(600)
    t = time.perf_counter()
    act(widget, "propose")
    t_action = time.perf_counter() - t
    first = None
    while time.perf_counter() - t < budget:
        done = [p for p in widget.previews.values() if p.get("accuracy") is not None]
        if done and first is None:
            first = time.perf_counter() - t
        if len(done) == len(widget.previews):
            break
        time.sleep(0.05)
    total = time.perf_counter() - t
    done = sum(p.get("accuracy") is not None for p in widget.previews.values())
    used = sorted({p["samples"] for p in widget.previews.values() if p.get("samples") is not None})
    out = {"samples": n, "samples_used": used, "pending_layers": len(widget.previews), "done": done, "first_s": first,
           "all_s": total if done == len(widget.previews) else None, "budget_s": budget, "propose_action_s": t_action}
    widget.close()
    return out


def bench_model(key: str, repeats: int, tmp: Path | None, frontend_reason: str,
                preview_budget: float = 120.0) -> dict[str, Any]:
    label, build = MODELS[key]
    t = time.perf_counter()
    model = build()
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    session = PruningSession(model)
    t_session = time.perf_counter() - t
    t = time.perf_counter()
    widget = session.widget()
    t_widget = time.perf_counter() - t  # what the user waits for: metrics follow in the background
    widget.settle(600)
    t_metrics = time.perf_counter() - t
    rec = Recorder()
    widget.send = rec

    # Python side of one refresh: the rows of the tree + every heatmap
    payload.heatmaps(session)  # warm
    t_rows = median_time(lambda: payload.layer_states(session), repeats)
    t_heat = median_time(lambda: payload.heatmaps(session), repeats)

    # initial state: synced traits + the answer to "hello"
    state0, n_bin, bin_bytes = state_parts(widget)
    assets = sum(jsize(state0[k]) for k in ASSETS if k in state0)
    traits_json = jsize(state0)
    data_json = {k: jsize(state0[k]) for k in DATA_TRAITS}
    act(widget, "hello")
    hello_msgs = rec.take()
    hello = messages_size(hello_msgs)
    frontend_state = trait_values(widget)

    # update: propose, then accept the first pending layer
    act(widget, "propose")
    rec.take()
    before = state_parts(widget)[0]
    pending = [r["name"] for r in widget.rows() if r["status"] == "pending"]
    t = time.perf_counter()
    act(widget, "accept", layer=pending[0])
    t_accept = time.perf_counter() - t
    after = state_parts(widget)[0]
    accept_msgs = rec.take()
    changed = {k: after[k] for k in after if wire_json(after[k]) != wire_json(before.get(k))}
    upd = messages_size(accept_msgs)
    update_bytes = jsize(changed) + upd["json"] + upd["buffers"]
    frontend_changed = {k: json.loads(wire_json(v)) for k, v in changed.items()}

    # worst case for information: accept every remaining proposal at once
    act(widget, "accept_all")
    after_all = state_parts(widget)[0]
    all_msgs = rec.take()
    changed_all = {k: after_all[k] for k in after_all if wire_json(after_all[k]) != wire_json(after.get(k))}
    upd_all = messages_size(all_msgs)
    update_all_bytes = jsize(changed_all) + upd_all["json"] + upd_all["buffers"]

    out: dict[str, Any] = {
        "model": label, "nonfinite_traits": nonfinite_traits(widget),
        "output_bound_width": widget.metrics.get("output_bound_width"),
        "params": int(model.count_params()), "rows": len(widget.layers),
        "groups": len(session.graph.groups), "heatmaps": hello["count"],
        "time_s": {"build_model": t_model, "session": t_session, "widget": t_widget, "first_metrics": t_metrics,
                   "accept_action": t_accept},
        "python_payload_ms": {"layer_states": 1e3 * t_rows, "heatmaps": 1e3 * t_heat,
                              "total": 1e3 * (t_rows + t_heat)},
        "initial": {"traits_json": traits_json, "assets_json": assets, "data_traits_json": sum(data_json.values()),
                    "per_trait_json": data_json, "state_binary_parts": n_bin, "state_binary_bytes": bin_bytes,
                    "hello_json": hello["json"], "hello_buffers": hello["buffers"],
                    "total": traits_json + bin_bytes + hello["json"] + hello["buffers"]},
        "update": {"accepted": pending[0], "changed_traits": sorted(changed), "traits_json": jsize(changed),
                   "heatmaps_resent": upd["count"], "heatmaps_json": upd["json"], "heatmap_buffers": upd["buffers"],
                   "total": update_bytes, "limit": LIMIT, "pass": update_bytes < LIMIT},
        "update_accept_all": {"changed_traits": sorted(changed_all), "traits_json": jsize(changed_all),
                              "heatmaps_resent": upd_all["count"], "heatmap_buffers": upd_all["buffers"],
                              "total": update_all_bytes},
    }
    # sensitivity of every prunable group, in the background as the widget runs it (goal: < 30 s, < 100 KiB)
    act(widget, "undo")
    t = time.perf_counter()
    act(widget, "sensitivity")
    widget.wait_sensitivity(1800)
    t_sens = time.perf_counter() - t
    sens_bytes = jsize(widget.sensitivity)
    sens = widget.sensitivity
    out["sensitivity"] = {"seconds": t_sens, "status": sens.get("status"), "groups": len(sens.get("curves", {})),
                          "trait_json": sens_bytes, "notes": sens.get("notes", []),
                          "pass_time": t_sens < 30, "pass_size": sens_bytes < 100 * 1024}
    out["preview_accuracy"] = bench_preview_accuracy(model, preview_budget)
    if tmp is not None and not frontend_reason:
        data = {"state": frontend_state, "hello": heat_payload(hello_msgs),
                "changed": {k: v for k, v in frontend_changed.items() if k in DATA_TRAITS},
                "update": heat_payload(accept_msgs)}
        out["frontend_ms"] = time_frontend(tmp, key, data, repeats)
    else:
        out["frontend_ms"] = None
        out["frontend_skipped"] = frontend_reason
    widget.close()
    return out


# ---------------------------------------------------------------------- report
def kib(n: int) -> str:
    return f"{n / 1024:8.1f} KiB"


def report(r: dict[str, Any]) -> None:
    i, u, ua, p = r["initial"], r["update"], r["update_accept_all"], r["python_payload_ms"]
    print(f"\n== {r['model']}: {r['params']:,} params, {r['rows']} rows, {r['groups']} unit groups, "
          f"{r['heatmaps']} heatmaps")
    t = r["time_s"]
    print(f"  setup: model {t['build_model']:.2f} s, session {t['session']:.2f} s, widget shown after "
          f"{t['widget']:.2f} s, first metrics after {t['first_metrics']:.2f} s; accept action (with its metrics) "
          f"{t['accept_action']:.2f} s")
    print(f"  initial state      {kib(i['total'])}  = traits JSON {kib(i['traits_json'])} "
          f"(assets _esm+_css {kib(i['assets_json'])}, data traits {kib(i['data_traits_json'])}, "
          f"layers {kib(i['per_trait_json']['layers'])}) + binary parts in state: {i['state_binary_parts']} "
          f"({i['state_binary_bytes']} B) + hello heatmaps {kib(i['hello_buffers'])} binary "
          f"+ {kib(i['hello_json'])} header")
    verdict = "PASS" if u["pass"] else "MISS"
    req = " (requirement: ResNet50-sized update < 1 MB)" if "ResNet50" in r["model"] else ""
    print(f"  update (accept {u['accepted'][:40]}) {kib(u['total'])}  = changed traits "
          f"{','.join(u['changed_traits'])} {kib(u['traits_json'])} + {u['heatmaps_resent']} heatmaps resent "
          f"{kib(u['heatmap_buffers'])} + header {kib(u['heatmaps_json'])}   [{verdict} < 1 MB]{req}")
    print(f"  update (accept all remaining, info) {kib(ua['total'])}  = traits {kib(ua['traits_json'])} + "
          f"{ua['heatmaps_resent']} heatmaps {kib(ua['heatmap_buffers'])}")
    print(f"  python payload     layer_states {p['layer_states']:7.2f} ms + heatmaps {p['heatmaps']:7.2f} ms "
          f"= {p['total']:7.2f} ms (median)")
    if r["nonfinite_traits"]:
        print(f"  NOTE: traits {', '.join(r['nonfinite_traits'])} hold NaN/inf (metrics "
              f"output_bound_width={r.get('output_bound_width')}): not valid JSON; the kernel falls back to "
              f"jupyter_client's json_clean ('nan' strings) with a DeprecationWarning on every update")
    pa = r.get("preview_accuracy")
    if pa:
        first = "-" if pa["first_s"] is None else f"{pa['first_s']:.1f} s"
        every = f"all {pa['pending_layers']} in {pa['all_s']:.1f} s" if pa["all_s"] is not None else \
            f"{pa['done']} of {pa['pending_layers']} within the {pa['budget_s']:.0f} s budget"
        print(f"  accuracy preview   {pa['samples']} samples (used {pa['samples_used']}): first layer {first}, {every} "
              f"(background; "
              f"propose itself {pa['propose_action_s']:.2f} s)")
    sv = r.get("sensitivity")
    if sv:
        print(f"  sensitivity        {sv['groups']} layers in {sv['seconds']:.1f} s (background; goal < 30 s: "
              f"{'PASS' if sv['pass_time'] else 'MISS'}), trait {kib(sv['trait_json'])} (goal < 100 KiB: "
              f"{'PASS' if sv['pass_size'] else 'MISS'}){'; ' + '; '.join(sv['notes']) if sv['notes'] else ''}")
    f = r["frontend_ms"]
    if f is None:
        print(f"  front-end render   not timed: {r['frontend_skipped']}")
    else:
        print(f"  front-end render   render {f['render_ms']:7.2f} ms + hello heatmaps {f['heatmaps_ms']:7.2f} ms "
              f"= {f['initial_ms']:7.2f} ms (median); update {f['update_ms']:7.2f} ms "
              f"({f['changed_traits']} change events + resent heatmaps); cold first render "
              f"{f['cold']['render'] + f['cold']['heatmaps']:.2f} ms; {f['rows']} rows, {f['painted']} heatmaps "
              f"drawn, hello sent {f['hello_sent']}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (median); default 5")
    ap.add_argument("--json", metavar="PATH", help="also write all figures + machine info as JSON")
    ap.add_argument("--preview-budget", type=float, default=120.0,
                    help="seconds to wait for the accuracy previews of one proposal (default 120)")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; choose from {','.join(MODELS)}")

    reason = node_available()
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("node") else None
    machine = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
               "keras": keras.__version__, "numpy": np.__version__, "node": node_version}
    print(f"bench_widget: Python {machine['python']}, Keras {machine['keras']}, NumPy {machine['numpy']}, "
          f"node {node_version or '-'}, {machine['cpus']} CPUs, repeats {args.repeats}")
    print("sizes are compact-JSON bytes + raw binary buffer bytes (no websocket framing); 1 KiB = 1024 B")
    if reason:
        print(f"front-end render not timed: {reason}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_widget-") as tmp:
        for key in keys:
            r = bench_model(key, args.repeats, Path(tmp), reason, args.preview_budget)
            report(r)
            results.append(r)
            keras.backend.clear_session()
    resnet = [r for r in results if "ResNet50" in r["model"]]
    if resnet:
        u = resnet[0]["update"]
        print(f"\nrequirement: an update for a ResNet50-sized model stays under 1 MB: "
              f"{'PASS' if u['pass'] else 'MISS'} ({u['total'] / 1024:.1f} KiB)")
    if args.json:
        Path(args.json).write_text(wire_json({"machine": machine, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
