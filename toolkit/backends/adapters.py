"""LoRA adapters over one loaded base model, switched per batch (peft): N fine-tuned models
cost one base model plus N small adapters, instead of N merged copies. Adapters load on
first use and the least recently used go past `max_loaded`. Not thread-safe: the engine's
worker is the only caller (loading an adapter changes the model's modules)."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from pathlib import Path


class Adapters:
    def __init__(self, generator, max_loaded: int = 8):
        self.gen, self.max_loaded = generator, max_loaded
        self.paths: dict[str, Path] = {}
        self.loaded: OrderedDict[str, None] = OrderedDict()
        self.peft = None  # the PeftModel around the generator's model, once an adapter is loaded

    def add(self, name: str, path: Path) -> None:
        self.paths[name] = Path(path)

    def unload(self, name: str) -> None:
        """Free an adapter's memory; it loads again if asked for (a request already routed to it)."""
        if name in self.loaded and len(self.loaded) > 1:  # peft keeps at least one adapter once it has one
            self.loaded.pop(name)
            self.peft.delete_adapter(name)

    def use(self, name: str | None):
        """A context in which the generator answers with adapter `name` (None: the base model)."""
        if name is None:
            return self.peft.disable_adapter() if self.peft is not None else nullcontext()
        return self._active(name)

    @contextmanager
    def _active(self, name: str):
        self._load(name)
        self.peft.set_adapter(name)
        yield

    def _load(self, name: str) -> None:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return
        if name not in self.paths:
            raise KeyError(f"no adapter '{name}'")
        if self.peft is None:
            # torch, transformers, peft: imported on first use, not when this module loads
            from peft import PeftModel
            self.peft = PeftModel.from_pretrained(self.gen.model, str(self.paths[name]), adapter_name=name)
            self.peft.eval()
            self.gen.model = self.peft  # the generator calls through it from now on (base: disable_adapter)
        else:
            self.peft.load_adapter(str(self.paths[name]), adapter_name=name)
        self.loaded[name] = None
        while len(self.loaded) > self.max_loaded:
            old, _ = self.loaded.popitem(last=False)
            self.peft.delete_adapter(old)
