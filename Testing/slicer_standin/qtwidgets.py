"""Minimal Qt, CTK and MRML widgets with PythonQt's conventions.

PythonQt exposes Qt properties as attributes (``button.text = "Cancel"``,
``combo.currentIndex``, ``progressBar.value``) and signals as objects with
``connect``/``disconnect``; old-style ``widget.connect("clicked(bool)", slot)``
works too. Setting a property that has a change signal emits it, as Qt does.
Widgets are built from a ``.ui`` file by :mod:`uiloader` (``qt.QUiLoader``).
Dialogs (``ctk.ctkMessageBox``, which Slicer's own ``slicer.util`` shows) are
recorded in ``qt.QDialog.shown`` and answered from ``ctkMessageBox.answers``.
The qMRML widgets observe the real MRML scene, taking call data the VTK way
(``vtk.calldata_type``).
"""

from __future__ import annotations

import os
import time
import types
from typing import Any, Callable, Dict, List, Optional

import vtk


class Signal:
    def __init__(self) -> None:
        self._slots: List[Callable] = []
        self._blocked = False

    def connect(self, slot: Callable) -> None:
        self._slots.append(slot)

    def disconnect(self, slot: Optional[Callable] = None) -> None:
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            _callSlot(slot, args)

    __call__ = emit


def _callSlot(slot: Callable, args: tuple) -> None:
    """Call with as many arguments as the slot takes (PythonQt drops extra signal arguments)."""
    import inspect

    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        slot(*args)
        return
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        slot(*args)
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    slot(*args[: len(positional)])


class QObject:
    _signalNames: tuple = ("destroyed",)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        self._properties: Dict[str, Any] = {}
        self._children: List[QObject] = []
        self._parent: Optional[QObject] = None
        self._signalsBlocked = False
        self.objectName = ""
        for cls in type(self).__mro__:
            for name in getattr(cls, "_signalNames", ()):
                if name not in self.__dict__:
                    setattr(self, name, Signal())
        if parent is not None:
            self.setParent(parent)

    def setParent(self, parent: Optional[QObject]) -> None:
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self) -> Optional[QObject]:
        return self._parent

    def children(self) -> List[QObject]:
        return list(self._children)

    def setProperty(self, name: str, value: Any) -> None:
        self._properties[name] = value

    def property(self, name: str) -> Any:
        return self._properties.get(name)

    def findChildren(self, cls: type = None) -> List[QObject]:
        found: List[QObject] = []
        for child in self._children:
            if cls is None or isinstance(child, cls):
                found.append(child)
            found.extend(child.findChildren(cls))
        return found

    def findChild(self, cls: type, name: str) -> Optional[QObject]:
        return next((c for c in self.findChildren(cls) if c.objectName == name), None)

    def blockSignals(self, block: bool) -> bool:
        old = self._signalsBlocked
        self._signalsBlocked = bool(block)
        return old

    def _emit(self, signalName: str, *args: Any) -> None:
        if not self._signalsBlocked:
            getattr(self, signalName).emit(*args)

    def connect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature: str, slot: Callable) -> None:
        getattr(self, signature.split("(")[0]).disconnect(slot)

    def deleteLater(self) -> None:
        self.setParent(None)


#: PythonQt's ``name``: the object name (what ``slicer.util.childWidgetVariables`` reads).
QObject.name = property(lambda self: self.objectName)


class QWidget(QObject):
    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self._layout: Optional[QLayout] = None

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def setVisible(self, visible: bool) -> None:
        self.visible = bool(visible)

    def show(self) -> None:
        self.visible = True

    def hide(self) -> None:
        self.visible = False

    def isVisible(self) -> bool:
        return self.visible

    def setToolTip(self, text: str) -> None:
        self.toolTip = text

    def setLayout(self, layout: QLayout) -> None:
        self._layout = layout
        layout._owner = self

    def layout(self) -> Optional[QLayout]:
        return self._layout


class QLayout(QObject):
    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(None)
        self._owner: Optional[QWidget] = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget: QWidget, *args: Any) -> None:
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *args: Any) -> None:
        for a in args:
            if isinstance(a, QWidget):
                self.addWidget(a)

    def addStretch(self, *args: Any) -> None:
        pass

    def addItem(self, *args: Any) -> None:
        pass


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QLabel(QWidget):
    def __init__(self, text: str = "", parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.text = text
        self.wordWrap = False
        self.textFormat = None
        self.openExternalLinks = False

    def setText(self, text: str) -> None:
        self.text = str(text)


class QAbstractButton(QWidget):
    _signalNames = ("clicked", "toggled")

    def __init__(self, text: str = "", parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.text = text
        self.checkable = False
        self._checked = False

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self._onCheckedChanged(value)

    def _onCheckedChanged(self, value: bool) -> None:
        self._emit("toggled", value)

    def setChecked(self, value: bool) -> None:
        self.checked = value

    def isChecked(self) -> bool:
        return self._checked

    def setText(self, text: str) -> None:
        self.text = str(text)

    def click(self) -> None:
        """What a user's click does: toggle if checkable, then emit ``clicked(checked)``."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self._checked
        self._emit("clicked", self._checked)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    _signalNames = ("stateChanged",)

    def __init__(self, text: str = "", parent: Optional[QObject] = None) -> None:
        super().__init__(text, parent)
        self.checkable = True

    def _onCheckedChanged(self, value: bool) -> None:
        self._emit("stateChanged", 2 if value else 0)
        self._emit("toggled", value)


class QComboBox(QWidget):
    _signalNames = ("currentIndexChanged", "currentTextChanged", "activated")

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._items: List[List[Any]] = []  # [text, userData]
        self._currentIndex = -1

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentIndex(self) -> int:
        return self._currentIndex

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        index = int(index) if 0 <= int(index) < len(self._items) else -1
        if index != self._currentIndex:
            self._currentIndex = index
            self._emit("currentIndexChanged", index)
            self._emit("currentTextChanged", self.currentText)

    def setCurrentIndex(self, index: int) -> None:
        self.currentIndex = index

    @property
    def currentText(self) -> str:
        return self._items[self._currentIndex][0] if self._currentIndex >= 0 else ""

    def addItem(self, text: str, userData: Any = None) -> None:
        self._items.append([str(text), userData])
        if self._currentIndex < 0:
            self.currentIndex = 0

    def clear(self) -> None:
        self._items = []
        if self._currentIndex != -1:
            self._currentIndex = -1
            self._emit("currentIndexChanged", -1)

    def itemText(self, index: int) -> str:
        return self._items[index][0] if 0 <= index < len(self._items) else ""

    def itemData(self, index: int) -> Any:
        return self._items[index][1] if 0 <= index < len(self._items) else None

    def findData(self, data: Any) -> int:
        return next((i for i, item in enumerate(self._items) if item[1] == data), -1)

    def findText(self, text: str) -> int:
        return next((i for i, item in enumerate(self._items) if item[0] == text), -1)

    def setItemData(self, index: int, value: Any, role: Any = None) -> None:
        if role is None:
            self._items[index][1] = value


class QDoubleSpinBox(QWidget):
    """``value`` is kept within ``minimum``-``maximum`` and rounded to ``decimals``, as Qt does."""

    _signalNames = ("valueChanged",)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.minimum = 0.0
        self.maximum = 99.99
        self.decimals = 2
        self.singleStep = 1.0
        self.suffix = ""
        self.prefix = ""
        self.specialValueText = ""
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = round(min(max(float(value), float(self.minimum)), float(self.maximum)), int(self.decimals))
        if value != self._value:
            self._value = value
            self._emit("valueChanged", value)

    def setValue(self, value: float) -> None:
        self.value = value

    def setRange(self, minimum: float, maximum: float) -> None:
        self.minimum, self.maximum = float(minimum), float(maximum)
        self.value = self._value


class QProgressBar(QWidget):
    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.value = 0
        self.minimum = 0
        self.maximum = 100
        self.format = "%p%"
        self.textVisible = True

    def setValue(self, value: int) -> None:
        self.value = int(value)

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = int(minimum), int(maximum)

    def setFormat(self, fmt: str) -> None:
        self.format = fmt


class QPlainTextEdit(QWidget):
    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.plainText = ""
        self.readOnly = False

    def appendPlainText(self, text: str) -> None:
        self.plainText = f"{self.plainText}\n{text}" if self.plainText else str(text)

    def setPlainText(self, text: str) -> None:
        self.plainText = str(text)

    def toPlainText(self) -> str:
        return self.plainText

    def clear(self) -> None:
        self.plainText = ""


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self._text = str(text)

    def text(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        self._text = str(text)


class QTableWidget(QWidget):
    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._rows = 0
        self._columns = 0
        self._cells: Dict[tuple, QTableWidgetItem] = {}
        self.headerLabels: List[str] = []

    @property
    def rowCount(self) -> int:
        return self._rows

    @property
    def columnCount(self) -> int:
        return self._columns

    def setRowCount(self, rows: int) -> None:
        self._rows = int(rows)
        self._cells = {k: v for k, v in self._cells.items() if k[0] < self._rows}

    def setColumnCount(self, columns: int) -> None:
        self._columns = int(columns)

    def setHorizontalHeaderLabels(self, labels: List[str]) -> None:
        self.headerLabels = list(labels)

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        if not (0 <= row < self._rows and 0 <= column < self._columns):
            raise IndexError(f"cell ({row}, {column}) outside a {self._rows}x{self._columns} table")
        self._cells[(row, column)] = item

    def item(self, row: int, column: int) -> Optional[QTableWidgetItem]:
        return self._cells.get((row, column))

    def clearContents(self) -> None:
        self._cells = {}


class QTimer(QObject):
    """Fires in :meth:`Application.processEvents` once its interval has elapsed."""

    _signalNames = ("timeout",)
    _active: List[QTimer] = []

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._due = 0.0

    def setInterval(self, msec: int) -> None:
        self.interval = int(msec)

    def setSingleShot(self, single: bool) -> None:
        self.singleShot_ = bool(single)

    def start(self, msec: Optional[int] = None) -> None:
        if msec is not None:
            self.interval = int(msec)
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in QTimer._active:
            QTimer._active.append(self)

    def stop(self) -> None:
        if self in QTimer._active:
            QTimer._active.remove(self)

    def isActive(self) -> bool:
        return self in QTimer._active

    @staticmethod
    def singleShot(msec: int, slot: Callable) -> None:
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(slot)
        timer.start(msec)

    @classmethod
    def fireDue(cls) -> None:
        now = time.monotonic()
        for timer in list(cls._active):
            if timer in cls._active and now >= timer._due:
                if timer.singleShot_:
                    timer.stop()
                else:
                    timer._due = now + timer.interval / 1000.0
                timer._emit("timeout")


class QUrl:
    def __init__(self, url: str = "") -> None:
        self._url = url

    @staticmethod
    def fromLocalFile(path: str) -> QUrl:
        return QUrl("file://" + str(path))

    def toLocalFile(self) -> str:
        return self._url[len("file://") :] if self._url.startswith("file://") else ""

    def toString(self) -> str:
        return self._url


class QDesktopServices:
    opened: List[str] = []

    @staticmethod
    def openUrl(url: QUrl) -> bool:
        QDesktopServices.opened.append(url.toString())
        return True


class QFileDialog:
    """``getOpenFileName`` returns what a test queued in ``nextFileNames`` (else "", as on Cancel)."""

    nextFileNames: List[str] = []

    @staticmethod
    def getOpenFileName(*args: Any) -> str:
        return QFileDialog.nextFileNames.pop(0) if QFileDialog.nextFileNames else ""


class QSettings:
    _store: Dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return QSettings._store.get(key, default)

    def setValue(self, key: str, value: Any) -> None:
        QSettings._store[key] = value


class QIcon:
    def __init__(self, path: str = "") -> None:
        self.path = path


class QFont:
    def __init__(self, *args: Any) -> None:
        self.bold = False


class QSpacerItem:
    def __init__(self, *args: Any) -> None:
        pass


class QDialog(QWidget):
    """A modal dialog: ``exec_()`` records it in ``QDialog.shown`` and returns at once."""

    shown: List[Any] = []

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(None)
        self.windowTitle = ""

    def exec_(self) -> int:
        QDialog.shown.append(self)
        return 0

    def close(self) -> None:
        self.visible = False


class QMessageBox(QDialog):
    Ok, Yes, No, Retry, Close, Cancel = 0x400, 0x4000, 0x10000, 0x80000, 0x200000, 0x400000
    NoIcon, Information, Warning, Critical, Question = 0, 1, 2, 3, 4


class QCursor:
    def __init__(self, shape: int = 0) -> None:
        self._shape = shape

    def shape(self) -> int:
        return self._shape


class QApplication:
    """The override-cursor stack (``slicer.app`` pushes onto it; ``slicer.util`` empties it around dialogs)."""

    _cursors: List[QCursor] = []

    @staticmethod
    def setOverrideCursor(cursor: Any) -> None:
        QApplication._cursors.append(cursor if isinstance(cursor, QCursor) else QCursor(cursor))

    @staticmethod
    def restoreOverrideCursor() -> None:
        if QApplication._cursors:
            QApplication._cursors.pop()

    @staticmethod
    def overrideCursor() -> Optional[QCursor]:
        return QApplication._cursors[-1] if QApplication._cursors else None


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        return os.path.isfile(self.path)

    def open(self, mode: int) -> bool:
        return self.exists()


class QUiLoader:
    def load(self, qfile: QFile, parent: Any = None) -> Any:
        from .uiloader import loadUI

        return loadUI(qfile.path)


# -- CTK and MRML widgets --------------------------------------------------------------


class ctkCollapsibleButton(QAbstractButton):
    _signalNames = ("contentsCollapsed",)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__("", parent)
        self.checkable = True
        self._checked = True

    @property
    def collapsed(self) -> bool:
        return not self._checked

    @collapsed.setter
    def collapsed(self, value: bool) -> None:
        self.checked = not value


class ctkMessageBox(QMessageBox):
    """``exec_()`` records the box in ``shown`` and returns the next of ``answers`` (else the first button)."""

    answers: List[int] = []

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.text = ""
        self.detailedText = ""
        self.icon = QMessageBox.NoIcon
        self.standardButtons = QMessageBox.Ok
        self.dontShowAgainVisible = False

    def exec_(self) -> int:
        QDialog.shown.append(self)
        if ctkMessageBox.answers:
            return ctkMessageBox.answers.pop(0)
        buttons = int(self.standardButtons)
        return next(b for b in (QMessageBox.Ok, QMessageBox.Yes, QMessageBox.Retry, QMessageBox.Close) if buttons & b)


class ctkComboBox(QComboBox):
    pass


class ctkCheckBox(QCheckBox):
    pass


class qMRMLWidget(QWidget):
    _signalNames = ("mrmlSceneChanged",)

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._scene: Any = None

    def setMRMLScene(self, scene: Any) -> None:
        self._scene = scene
        self._emit("mrmlSceneChanged", scene)

    def mrmlScene(self) -> Any:
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    """Lists the scene's nodes of ``nodeTypes``; ``currentNodeChanged(vtkMRMLNode*)`` on change."""

    _signalNames = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded")

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.nodeTypes: List[str] = []
        self.noneEnabled = False
        self.addEnabled = True
        self.removeEnabled = True
        self.renameEnabled = False
        self.editEnabled = False
        self.showChildNodeTypes = True
        self.showHidden = False
        self.noneDisplay = "None"
        self.selectNodeUponCreation = True
        self._current: Any = None
        self._observerTag: Optional[int] = None

    def setMRMLScene(self, scene: Any) -> None:
        if self._scene is not None and self._observerTag is not None:
            self._scene.RemoveObserver(self._observerTag)
        super().setMRMLScene(scene)
        if scene is not None:
            self._observerTag = scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved)
        if self._current is None and not self.noneEnabled:
            nodes = self.nodes()
            if nodes:
                self.setCurrentNode(nodes[0])

    def nodes(self) -> List[Any]:
        if self._scene is None:
            return []
        nodes = [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())]
        return [n for n in nodes if not n.GetHideFromEditors() and any(self._matches(n, t) for t in self.nodeTypes)]

    def _matches(self, node: Any, nodeType: str) -> bool:
        if self.showChildNodeTypes:
            return node.IsA(nodeType)
        return node.GetClassName() == nodeType

    def currentNode(self) -> Any:
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node: Any) -> None:
        if node is not None and node.GetID() not in [n.GetID() for n in self.nodes()]:
            raise ValueError(f"{node.GetID()} is not a {self.nodeTypes} node of the combo box's scene")
        if node is not self._current:
            self._current = node
            self._emit("currentNodeChanged", node)
            self._emit("currentNodeIDChanged", node.GetID() if node is not None else "")

    def setCurrentNodeID(self, nodeId: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(nodeId) if nodeId else None)

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _onNodeRemoved(self, caller: Any, event: Any, node: Any) -> None:
        if node is not None and self._current is not None and node.GetID() == self._current.GetID():
            remaining = self.nodes()
            self.setCurrentNode(None if self.noneEnabled or not remaining else remaining[0])


WIDGET_CLASSES: Dict[str, type] = {
    c.__name__: c
    for c in (
        QWidget,
        QLabel,
        QPushButton,
        QCheckBox,
        QComboBox,
        QDoubleSpinBox,
        QProgressBar,
        QPlainTextEdit,
        QTableWidget,
        ctkCollapsibleButton,
        ctkComboBox,
        ctkCheckBox,
        qMRMLWidget,
        qMRMLNodeComboBox,
    )
}
LAYOUT_CLASSES: Dict[str, type] = {c.__name__: c for c in (QVBoxLayout, QHBoxLayout, QFormLayout, QGridLayout)}


def makeQtModule() -> types.ModuleType:
    qt = types.ModuleType("qt")
    for name, obj in list(globals().items()):
        if name.startswith("Q") and isinstance(obj, type):
            setattr(qt, name, obj)
    qt.Qt = types.SimpleNamespace(WaitCursor=3, ArrowCursor=0, RichText=1, PlainText=0, UserRole=256, AlignLeft=1)
    QTimer._active = []
    QDialog.shown = []
    ctkMessageBox.answers = []
    QApplication._cursors = []
    QDesktopServices.opened = []
    QFileDialog.nextFileNames = []
    QSettings._store = {}
    return qt


def makeCtkModule() -> types.ModuleType:
    ctk = types.ModuleType("ctk")
    for name in ("ctkCollapsibleButton", "ctkComboBox", "ctkCheckBox", "ctkMessageBox"):
        setattr(ctk, name, globals()[name])
    return ctk
