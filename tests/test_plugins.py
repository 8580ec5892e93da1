"""The plugin registry: plugins registered lazily are made on their first lookup, once."""

from __future__ import annotations

from auditor.plugins import Registry


def test_a_lazy_plugin_is_made_on_first_lookup_and_only_once() -> None:
    made: list[str] = []

    def make(name: str) -> str:
        made.append(name)
        return name.upper()

    reg: Registry[str] = Registry("thing")
    reg.add("plain", "PLAIN")
    reg.add_lazy("lazy", lambda: make("lazy"))
    reg.add_lazy("other", lambda: make("other"))
    assert made == [] and "lazy" in reg and reg.names() == ["lazy", "other", "plain"]
    assert reg.get("lazy") == "LAZY" and reg.get("lazy") == "LAZY" and made == ["lazy"]
    assert reg.get("missing") is None
    assert reg.values() == ["PLAIN", "LAZY", "OTHER"] and made == ["lazy", "other"]
    assert reg.items() == {"lazy": "LAZY", "other": "OTHER", "plain": "PLAIN"} and made == ["lazy", "other"]
