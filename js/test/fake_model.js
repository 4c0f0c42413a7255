// A stand-in for anywidget's model: traits in a plain object, listeners, and what the view sends.

export function fakeModel(state) {
  const handlers = new Map();
  const sent = [];
  return {
    sent,
    get: (k) => state[k],
    set: (k, v) => { state[k] = v; },
    save_changes: () => {},
    on: (ev, cb) => { (handlers.get(ev) || handlers.set(ev, []).get(ev)).push(cb); },
    send: (msg) => sent.push(msg),
    trigger: (ev, ...args) => (handlers.get(ev) || []).forEach((cb) => cb(...args)),
    update(k, v) { state[k] = v; this.trigger(`change:${k}`); },
  };
}
