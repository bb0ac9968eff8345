"""Build stand-in widgets from a Qt Designer ``.ui`` file (what ``slicer.util.loadUI`` does with QUiLoader).

Properties are applied as ``QObject::setProperty`` does: a name the widget
class has becomes that property, any other name (``SlicerParameterName``) a
dynamic property. An unknown widget class is an error, so a ``.ui`` that
uses a widget the stand-in lacks fails loudly rather than loading half.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional

from . import qtwidgets


class UiLoadError(Exception):
    pass


def propertyValue(element: ET.Element) -> Any:
    """Value of a ``<property>`` element: string, bool, number, double, stringlist, enum/set or None."""
    if len(element) == 0:
        return None
    value = element[0]
    tag = value.tag
    if tag in ("string", "cstring", "enum", "set"):
        return value.text or ""
    if tag == "bool":
        return (value.text or "").strip() == "true"
    if tag == "number":
        return int(value.text or 0)
    if tag == "double":
        return float(value.text or 0)
    if tag == "stringlist":
        return [s.text or "" for s in value.findall("string")]
    return None  # geometry, font, size policy: layout-only


def _applyProperty(widget: Any, name: str, value: Any) -> None:
    if value is None:
        return
    known = hasattr(type(widget), name) or name in widget.__dict__
    if known and not name.startswith("_") and not callable(getattr(widget, name)):
        setattr(widget, name, value)
    else:
        widget.setProperty(name, value)


def _buildWidget(element: ET.Element, parent: Optional[Any], named: Dict[str, Any]) -> Any:
    className = element.get("class", "")
    cls = qtwidgets.WIDGET_CLASSES.get(className)
    if cls is None:
        raise UiLoadError(f"the Slicer stand-in has no widget class {className} (object {element.get('name')})")
    widget = cls()
    if parent is not None:
        widget.setParent(parent)
    widget.objectName = element.get("name", "")
    named[widget.objectName] = widget
    for prop in element.findall("property"):
        _applyProperty(widget, prop.get("name", ""), propertyValue(prop))
    if isinstance(widget, qtwidgets.QComboBox):
        for item in element.findall("item"):
            text = next((propertyValue(p) for p in item.findall("property") if p.get("name") == "text"), "")
            widget.addItem(text)
    if isinstance(widget, qtwidgets.QTableWidget):
        headers = [
            next((propertyValue(p) for p in c.findall("property") if p.get("name") == "text"), "")
            for c in element.findall("column")
        ]
        widget.setColumnCount(len(headers))
        widget.setHorizontalHeaderLabels(headers)
    for child in element.findall("widget"):
        _buildWidget(child, widget, named)
    for layout in element.findall("layout"):
        _buildLayout(layout, widget, named)
    return widget


def _buildLayout(element: ET.Element, owner: Any, named: Dict[str, Any]) -> None:
    cls = qtwidgets.LAYOUT_CLASSES.get(element.get("class", ""), qtwidgets.QVBoxLayout)
    layout = cls()
    layout.objectName = element.get("name", "")
    if owner.layout() is None:
        owner.setLayout(layout)
    for item in element.findall("item"):
        for child in item.findall("widget"):
            _buildWidget(child, owner, named)
        for sub in item.findall("layout"):
            _buildLayout(sub, owner, named)


def _connect(element: ET.Element, named: Dict[str, Any]) -> None:
    for connection in element.findall("connection"):
        sender = named.get(connection.findtext("sender", ""))
        receiver = named.get(connection.findtext("receiver", ""))
        signal = connection.findtext("signal", "").split("(")[0]
        slot = connection.findtext("slot", "").split("(")[0]
        if sender is None or receiver is None or not hasattr(sender, signal) or not hasattr(receiver, slot):
            raise UiLoadError(
                f"cannot make the .ui connection {connection.findtext('sender')}.{signal} -> {connection.findtext('receiver')}.{slot}"
            )
        getattr(sender, signal).connect(getattr(receiver, slot))


def loadUI(path: str) -> Any:
    """The top-level widget of the ``.ui`` file at ``path``, its children built and connected."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise UiLoadError(f"cannot read {path}: {e}") from e
    top = root.find("widget")
    if top is None:
        raise UiLoadError(f"{path} has no top-level widget")
    named: Dict[str, Any] = {}
    widget = _buildWidget(top, None, named)
    connections = root.find("connections")
    if connections is not None:
        _connect(connections, named)
    return widget


def childWidgetVariables(widget: Any) -> Any:
    """Namespace of every named child (what ``slicer.util.childWidgetVariables`` returns)."""
    import types

    children: List[Any] = widget.findChildren(qtwidgets.QObject)
    return types.SimpleNamespace(**{c.objectName: c for c in children if c.objectName})
