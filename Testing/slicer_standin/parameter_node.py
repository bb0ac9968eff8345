"""``slicer.parameterNodeWrapper`` of the stand-in: typed parameters stored in a scripted module node.

Follows the real wrapper's rules where the module depends on them: defaults
are written into the node when missing; nodes are stored as node references
named after the parameter; ``connectGui`` binds every widget whose
``SlicerParameterName`` property names a parameter, raising for an unknown
name or a widget/type pair without a connector (exact widget classes, as the
real connectors check); GUI changes write the parameter and parameter changes
update every bound widget.
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any, Callable, Dict, List, Optional

SlicerParameterNamePropertyName = "SlicerParameterName"


class Choice:
    def __init__(self, choices: List[Any]) -> None:
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = minimum, maximum


class Default:
    def __init__(self, value: Any) -> None:
        self.value = value


def _split(annotation: Any) -> tuple:
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _isNodeType(t: Any) -> bool:
    return isinstance(t, type) and any(c.__name__ == "vtkMRMLNode" for c in t.__mro__)


class _Parameter:
    def __init__(self, name: str, annotation: Any, default: Any) -> None:
        self.name = name
        self.type, extras = _split(annotation)
        self.choice = next((e for e in extras if isinstance(e, Choice)), None)
        self.range = next((e for e in extras if isinstance(e, WithinRange)), None)
        if default is _MISSING:
            default = next((e.value for e in extras if isinstance(e, Default)), _MISSING)
        if default is _MISSING:
            default = self._typeDefault()
        self.default = default

    def _typeDefault(self) -> Any:
        if _isNodeType(self.type):
            return None
        if isinstance(self.type, type) and issubclass(self.type, enum.Enum):
            return next(iter(self.type))
        if self.choice is not None:
            return self.choice.choices[0]
        return {bool: False, int: 0, float: 0.0, str: ""}[self.type]

    def validate(self, value: Any) -> None:
        if _isNodeType(self.type):
            if value is not None and not value.IsA(self.type.__name__):
                raise ValueError(f"{self.name} must be a {self.type.__name__}, not {value.GetClassName()}")
            return
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise TypeError(f"{self.name} must be {self.type.__name__}, not {type(value).__name__}")
        if self.choice is not None and value not in self.choice.choices:
            raise ValueError(f"{self.name}: {value!r} is not one of {self.choice.choices}")
        if self.range is not None and not (self.range.minimum <= value <= self.range.maximum):
            raise ValueError(f"{self.name}: {value} is outside {self.range.minimum}-{self.range.maximum}")

    def write(self, node: Any, value: Any) -> None:
        self.validate(value)
        if _isNodeType(self.type):
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            node.SetParameter(self.name, "")
        elif isinstance(self.type, type) and issubclass(self.type, enum.Enum):
            node.SetParameter(self.name, value.name)
        else:
            node.SetParameter(self.name, repr(value) if self.type is not str else value)

    def read(self, node: Any) -> Any:
        if _isNodeType(self.type):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if isinstance(self.type, type) and issubclass(self.type, enum.Enum):
            return self.type[text]
        if self.type is bool:
            return text == "True"
        if self.type is str:
            return text
        return self.type(text)

    def isIn(self, node: Any) -> bool:
        return self.name in node.GetParameterNames()


_MISSING = object()


def _connector(widget: Any, parameter: _Parameter) -> Optional[Dict[str, Callable]]:
    """read/write/signal for a widget bound to a parameter, or None if no connector fits."""
    import ctk
    import qt
    import slicer

    t = parameter.type
    kind = type(widget)
    if kind is slicer.qMRMLNodeComboBox and _isNodeType(t):
        widget.nodeTypes = [t.__name__]
        return {"read": widget.currentNode, "write": widget.setCurrentNode, "signal": widget.currentNodeChanged}
    if kind in (qt.QCheckBox, ctk.ctkCheckBox) and t is bool:
        return {
            "read": lambda: widget.checked,
            "write": lambda v: setattr(widget, "checked", v),
            "signal": widget.stateChanged,
        }
    if kind is qt.QDoubleSpinBox and t is float:
        # as Slicer's connector: the range of a WithinRange annotation, else unbounded
        bounds = (
            (parameter.range.minimum, parameter.range.maximum) if parameter.range else (-float("inf"), float("inf"))
        )
        widget.setRange(*bounds)
        return {
            "read": lambda: widget.value,
            "write": lambda v: setattr(widget, "value", v),
            "signal": widget.valueChanged,
        }
    if kind in (qt.QComboBox, ctk.ctkComboBox) and isinstance(t, type) and issubclass(t, enum.Enum):
        labelFunc = getattr(t, "label", lambda e: e.name)
        members = list(t)
        widget.clear()
        for member in members:
            widget.addItem(labelFunc(member))
        return {
            "read": lambda: members[widget.currentIndex],
            "write": lambda v: setattr(widget, "currentIndex", members.index(v)),
            "signal": widget.currentIndexChanged,
        }
    if kind in (qt.QComboBox, ctk.ctkComboBox) and t in (int, float, str, bool):
        if parameter.choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        choices = parameter.choice.choices
        widget.clear()
        for c in choices:
            widget.addItem(str(c))
        return {
            "read": lambda: choices[widget.currentIndex],
            "write": lambda v: setattr(widget, "currentIndex", choices.index(v)),
            "signal": widget.currentIndexChanged,
        }
    return None


def parameterNodeWrapper(classtype: type) -> type:
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {
        name: _Parameter(name, annotation, classtype.__dict__.get(name, _MISSING)) for name, annotation in hints.items()
    }

    def __init__(self: Any, parameterNode: Any) -> None:
        self.parameterNode = parameterNode
        self._guis: Dict[int, Dict[str, Dict[str, Callable]]] = {}
        self._nextTag = 0
        self._updating = False
        for p in parameters.values():
            if not p.isIn(parameterNode):
                p.write(parameterNode, p.default)

    def getValue(self: Any, name: str) -> Any:
        return _param(name).read(self.parameterNode)

    def setValue(self: Any, name: str, value: Any) -> None:
        _param(name).write(self.parameterNode, value)

    def _param(name: str) -> _Parameter:
        if name not in parameters:
            raise ValueError(f"Cannot find a param with the given name: {name}")
        return parameters[name]

    def connectGui(self: Any, gui: Any) -> int:
        widgets = gui.findChildren(object) if hasattr(gui, "findChildren") else list(vars(gui).values())
        mapping = {}
        for w in widgets:
            name = w.property(SlicerParameterNamePropertyName) if hasattr(w, "property") else None
            if name:
                connector = _connector(w, _param(name))
                if connector is None:
                    raise RuntimeError(
                        f"Unable to create GUI connector from datatype {parameters[name].type} to widget type {type(w).__name__}"
                    )
                mapping[name] = connector
        tag = self._nextTag
        self._nextTag += 1
        self._guis[tag] = mapping
        for name, c in mapping.items():
            c["write"](self.getValue(name))
            c["callback"] = _guiToParam(self, name, c)
            c["signal"].connect(c["callback"])
        mapping["__observer__"] = self.parameterNode.AddObserver(33, lambda caller, event: _updateGui(self))
        return tag

    def disconnectGui(self: Any, tag: Optional[int]) -> None:
        mapping = self._guis.pop(tag, {})
        observer = mapping.pop("__observer__", None)
        if observer is not None:
            self.parameterNode.RemoveObserver(observer)
        for c in mapping.values():
            c["signal"].disconnect(c["callback"])

    def AddObserver(self: Any, event: Any, callback: Callable, priority: float = 0.0) -> int:
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self: Any, tag: int) -> None:
        self.parameterNode.RemoveObserver(tag)

    namespace: Dict[str, Any] = {
        "__init__": __init__,
        "getValue": getValue,
        "setValue": setValue,
        "connectGui": connectGui,
        "disconnectGui": disconnectGui,
        "AddObserver": AddObserver,
        "RemoveObserver": RemoveObserver,
        "allParameters": parameters,
        "default": lambda self, name: _param(name).default,
        "__doc__": classtype.__doc__,
    }
    for name in parameters:
        namespace[name] = property(
            lambda self, n=name: self.getValue(n), lambda self, value, n=name: self.setValue(n, value)
        )
    return type(classtype.__name__, (), namespace)


def _guiToParam(wrapper: Any, name: str, connector: Dict[str, Callable]) -> Callable:
    def callback(*args: Any) -> None:
        if not wrapper._updating:
            wrapper.setValue(name, connector["read"]())

    return callback


def _updateGui(wrapper: Any) -> None:
    if wrapper._updating:
        return
    wrapper._updating = True
    try:
        for mapping in wrapper._guis.values():
            for name, c in mapping.items():
                if name != "__observer__":
                    c["write"](wrapper.getValue(name))
    finally:
        wrapper._updating = False


def makeModule(slicer: types.ModuleType) -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")
    for name in ("parameterNodeWrapper", "Choice", "WithinRange", "Default", "SlicerParameterNamePropertyName"):
        setattr(module, name, globals()[name])
    return module
