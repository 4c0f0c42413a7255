"""Editable NumPy copies of a model's weights, with exact, compact patches.

Why: every pruning edit touches a few rows and columns of a few arrays.  Keeping
the weights as NumPy arrays (never the user's Keras variables) leaves the
original model untouched, makes edits vectorised, and lets each edit return a
:class:`Patch` holding only the positions it changed -- old and new values --
so undo/redo restores weights bit for bit without storing model copies.

A patch keeps *one* copy of the touched values, not two: undoing swaps the
stored values with the current ones (so the patch now holds the "after"
values), redoing swaps them back.  History memory is the touched positions once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Key = tuple[str, str]  # (layer name, variable name)
_AUTO_NAME = re.compile(r"variable(_\d+)?")


def variable_name(w: Any) -> str:
    """A Keras 3 variable's short name ('kernel', 'bias', 'gamma', ...)."""
    return str(w.path).rsplit("/", 1)[-1]


def layer_variable_names(layer: Any) -> list[str]:
    """Unique names for a layer's variables, in ``layer.weights`` order.

    Short names for ordinary layers; a nested model repeats short names, so its
    variables are told apart by position (paths differ between clones).
    """
    names = [variable_name(w) for w in layer.weights]
    # Variables created without a name get a global counter ("variable_18"), which differs in every
    # clone of the model: those are named by their position instead.
    names = [f"variable:{i}" if _AUTO_NAME.fullmatch(n) else n for i, n in enumerate(names)]
    if len(set(names)) == len(names):
        return names
    return [f"{i}:{n}" for i, n in enumerate(names)]


@dataclass
class ArrayPatch:
    """Some positions along one axis of one array, and their other values.

    ``values`` holds the values *not* currently in the store: the old ones
    after the edit, the new ones after an undo.
    """

    key: Key
    axis: int
    positions: np.ndarray
    values: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.positions.nbytes + self.values.nbytes)

    def swap(self, arrays: dict[Key, np.ndarray]) -> None:
        view = np.moveaxis(arrays[self.key], self.axis, 0)
        current = view[self.positions].copy()
        view[self.positions] = self.values
        self.values = current


@dataclass
class Patch:
    """A reversible change to a :class:`WeightStore` (arrays and alive masks)."""

    arrays: list[ArrayPatch] = field(default_factory=list)
    alive: list[tuple[int, np.ndarray, bool]] = field(default_factory=list)  # (group, units, now alive?)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.arrays) + sum(u.nbytes for _, u, _ in self.alive)

    def extend(self, other: Patch) -> None:
        self.arrays.extend(other.arrays)
        self.alive.extend(other.alive)


class WeightStore:
    """The current weights of every layer, and which units of each group live.

    ``arrays[(layer, var)]`` are private copies; ``alive[group_id]`` are boolean
    masks.  All mutation goes through :meth:`write` / :meth:`set_alive` so it
    can be recorded in a :class:`Patch`.
    """

    def __init__(self, arrays: dict[Key, np.ndarray], alive: dict[int, np.ndarray]) -> None:
        self.arrays = arrays
        self.alive = alive
        self.version = 0  # bumped on each change, for caches
        self.changed: dict[Key, int] = {}  # array -> the version that last wrote it (views redraw only those)

    @classmethod
    def from_model(cls, model: Any, group_sizes: dict[int, int]) -> WeightStore:
        arrays: dict[Key, np.ndarray] = {}
        for layer in _all_layers(model):
            for name, w in zip(layer_variable_names(layer), layer.weights):
                arrays[(layer.name, name)] = np.array(w.numpy(), copy=True)
        alive = {g: np.ones(n, dtype=bool) for g, n in group_sizes.items()}
        return cls(arrays, alive)

    def copy(self) -> WeightStore:
        return WeightStore({k: v.copy() for k, v in self.arrays.items()},
                           {k: v.copy() for k, v in self.alive.items()})

    def __getitem__(self, key: Key) -> np.ndarray:
        return self.arrays[key]

    def get(self, layer: str, var: str) -> np.ndarray | None:
        return self.arrays.get((layer, var))

    # ------------------------------------------------------------- mutation
    def write(self, key: Key, axis: int, positions: np.ndarray, values: np.ndarray | float, patch: Patch) -> None:
        """Set ``arr[..., positions, ...] = values`` along ``axis``, recording it."""
        arr = self.arrays[key]
        positions = np.asarray(positions, dtype=np.int64)
        view = np.moveaxis(arr, axis, 0)
        before = view[positions].copy()
        view[positions] = values
        patch.arrays.append(ArrayPatch(key, axis, positions, before))
        self.version += 1
        self.changed[key] = self.version

    def set_alive(self, group: int, units: np.ndarray, value: bool, patch: Patch) -> None:
        units = np.asarray(units, dtype=np.int64)
        self.alive[group][units] = value
        patch.alive.append((group, units, value))
        self.version += 1

    def apply(self, patch: Patch) -> None:
        """Redo a patch that was reverted (calls must alternate with :meth:`revert`)."""
        for p in patch.arrays:
            p.swap(self.arrays)
        for g, units, value in patch.alive:
            self.alive[g][units] = value
        self._touched(patch)

    def revert(self, patch: Patch) -> None:
        """Undo a patch (in reverse order, so overlapping writes unwind)."""
        for p in reversed(patch.arrays):
            p.swap(self.arrays)
        for g, units, value in reversed(patch.alive):
            self.alive[g][units] = not value
        self._touched(patch)

    def touch(self, key: Key) -> None:
        """Record that ``arrays[key]`` was changed in place outside :meth:`write` (caches key on this:
        the incremental value bounds, prepared kernels, the evaluation model)."""
        self.version += 1
        self.changed[key] = self.version

    def _touched(self, patch: Patch) -> None:
        self.version += 1
        for p in patch.arrays:
            self.changed[p.key] = self.version

    # ------------------------------------------------------------- model i/o
    def load_into(self, model: Any) -> None:
        """Copy these weights into a model with the same layers and shapes."""
        for layer in _all_layers(model):
            if layer.weights:
                layer.set_weights([self.arrays[(layer.name, n)] for n in layer_variable_names(layer)])

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def equal(self, other: WeightStore) -> bool:
        """Bit-for-bit equality of arrays and masks."""
        return (self.arrays.keys() == other.arrays.keys()
                and all(np.array_equal(self.arrays[k], other.arrays[k]) for k in self.arrays)
                and all(np.array_equal(self.alive[g], other.alive[g]) for g in self.alive))


def _all_layers(model: Any) -> Iterable[Any]:
    """Layers of the model that own weights (nested models are kept whole)."""
    yield from model.layers
