"""Untrusted YAML, read safely: presets and imported models' configs.

Only safe constructors run (a loader may add a few of its own, e.g. a config's tuple tag read as
a list); a mapping that names a key twice is refused, naming both lines, where PyYAML would keep
the last silently; and a document that nests too deep or expands (through anchors and aliases)
to too many values is refused before anything walks it.
"""

from __future__ import annotations

import yaml

MAX_DEPTH = 12
MAX_NODES = 100_000


def load_yaml(text: str, *, source: str, error: type[Exception], loader: type = yaml.SafeLoader):
    """``yaml.safe_load`` (or ``loader``, a :class:`yaml.SafeLoader` subclass), refusing a mapping
    that names the same key twice (``error`` names both lines).

    PyYAML keeps the last of two equal keys without a word, so a preset with two ``gain_db:``
    lines under one stem would render with one of them silently ignored. The document is
    composed once, checked, and constructed from the same nodes (safe constructors only).
    """
    loader = loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_unique_keys(node, source=source, error=error)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_unique_keys(root, *, source: str, error: type[Exception]) -> None:
    """Raise ``error`` for the first key given twice in one mapping, naming both lines.

    Walks the composed nodes in document order without recursion; a node reached again through
    an alias is checked once (an alias bomb costs no more than its nodes). Keys that a ``<<``
    merge brings in may be overridden, as YAML allows.
    """
    visited = set()
    todo = [(root, "")]
    while todo:
        node, where = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        children = []
        if isinstance(node, yaml.MappingNode):
            _duplicates(node, where, source, error)
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    children.append((value_node, where))
                    continue
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "<key>"
                children.append((value_node, f"{where}.{name}" if where else str(name)))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{where}[{i}]") for i, item in enumerate(node.value)]
        todo.extend(reversed(children))


def _duplicates(node, where: str, source: str, error: type[Exception]) -> None:
    first: dict = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        mark = key_node.start_mark
        if key in first:
            path = f"{where}.{key_node.value}" if where else key_node.value
            shown = path if path.isprintable() else repr(path)
            lines = (f"twice on line {first[key]}" if first[key] == mark.line + 1
                     else f"twice, at line {first[key]} and line {mark.line + 1}")
            raise error(f"{source}: {shown}: the key '{key_node.value}' is given {lines}; YAML would "
                              "silently keep the last one: delete one of them")
        first[key] = mark.line + 1


def check_size(value, *, source: str, what: str, error: type[Exception]) -> None:
    """Refuse deep nesting and alias bombs (anchors that expand to millions of nodes) up front."""
    budget = [MAX_NODES]

    def walk(node, level):
        budget[0] -= 1
        if budget[0] < 0:
            raise error(f"{source}: the {what} expands to more than {MAX_NODES} values (YAML anchors and "
                        "aliases?); write it out plainly")
        if level > MAX_DEPTH:
            raise error(f"{source}: the {what} is nested deeper than {MAX_DEPTH} levels; flatten it")
        for child in _children(node):
            walk(child, level + 1)

    walk(value, 0)


def _children(node):
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return node
    return ()
