"""PyDM screens: Qt Designer ``.ui`` files with PyDM widgets for a :class:`Screen`.

The layout is Qt's, not absolute: each section is a group box with a grid of
label and widget, sections stack in columns, and the images sit on top (the
workflow's live phase is a CA waveform, reshaped by its width PV).
Channels name their plugin, ``ca://${P}...`` for the control IOC and
``pva://${P}...`` for the edge (PyDM's p4p plugin decodes NTNDArray images);
``ptychoflow gui`` or ``pydm -m P=...`` fills in the prefix.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ptychoflow.screens import Row, Screen, is_string, pv_name

MACRO = "${P}"
IMAGE_SIZE = 360

# class -> (base class, module): the <customwidgets> entries Designer writes
CUSTOM = {
    "PyDMLabel": ("QLabel", "pydm.widgets.label"),
    "PyDMLineEdit": ("QLineEdit", "pydm.widgets.line_edit"),
    "PyDMEnumComboBox": ("QComboBox", "pydm.widgets.enum_combo_box"),
    "PyDMPushButton": ("QPushButton", "pydm.widgets.pushbutton"),
    "PyDMCheckbox": ("QCheckBox", "pydm.widgets.checkbox"),
    "PyDMByteIndicator": ("QWidget", "pydm.widgets.byte"),
    "PyDMScaleIndicator": ("QFrame", "pydm.widgets.scale"),
    "PyDMImageView": ("QWidget", "pydm.widgets.image"),
    "PyDMRelatedDisplayButton": ("QPushButton", "pydm.widgets.related_display_button"),
}

Prop = tuple[str, str, str]  # (property name, value type tag, value)


def _prop(el: ET.Element, name: str, kind: str, value: str, custom: bool) -> None:
    p = ET.SubElement(el, "property", name=name)
    if custom:
        p.set("stdset", "0")
    if kind == "stringlist":
        lst = ET.SubElement(p, "stringlist")
        ET.SubElement(lst, "string").text = value
    elif kind == "size":  # "WIDTHxHEIGHT"
        size = ET.SubElement(p, "size")
        width, height = value.split("x")
        ET.SubElement(size, "width").text = width
        ET.SubElement(size, "height").text = height
    else:
        ET.SubElement(p, kind).text = value


def _widget(parent: ET.Element, cls: str, name: str, std: tuple[Prop, ...] = (),
            custom: tuple[Prop, ...] = ()) -> ET.Element:
    el = ET.SubElement(ET.SubElement(parent, "item"), "widget", {"class": cls, "name": name})
    for prop in std:
        _prop(el, *prop, custom=False)
    for prop in custom:
        _prop(el, *prop, custom=True)
    return el


def _pydm_widget(screen: Screen, row: Row) -> tuple[str, tuple[Prop, ...], tuple[Prop, ...]]:
    """(class, standard properties, PyDM properties) of the widget showing ``row``."""
    spec = screen.spec(row)
    channel: Prop = ("channel", "string", pv_name(screen, row, MACRO, name_ca=True))
    tip: Prop = ("toolTip", "string", spec.desc)
    if row.kind == "button":
        return "PyDMPushButton", (tip, ("text", "string", screen.label(row))), (
            channel, ("pressValue", "string", row.value))
    if row.kind == "toggle":
        return "PyDMCheckbox", (tip,), (channel,)
    if row.kind == "combo":
        return "PyDMEnumComboBox", (tip,), (channel,)
    if row.kind == "entry":
        fmt: tuple[Prop, ...] = (("displayFormat", "enum", "PyDMLineEdit::String"),) \
            if is_string(spec) else ()
        return "PyDMLineEdit", (tip,), (channel, *fmt)
    if row.kind == "led":
        return "PyDMByteIndicator", (tip, ("maximumSize", "size", "24x20")), (
            channel, ("numBits", "number", "1"), ("showLabels", "bool", "false"))
    if row.kind == "progress":
        return "PyDMScaleIndicator", (tip,), (channel, ("barIndicator", "bool", "true"),
                                              ("showValue", "bool", "true"))
    if row.kind == "image":
        image: Prop = ("imageChannel", "string", pv_name(screen, row, MACRO, name_ca=True))
        size: tuple[Prop, ...] = (("minimumSize", "size", f"{IMAGE_SIZE}x{IMAGE_SIZE}"),)
        sizes = screen.size_rows(row)
        shape: tuple[Prop, ...]
        if sizes is None:  # an NTNDArray: its dimensions come [x, y]
            shape = (("dimensionOrder", "enum", "PyDMImageView::WidthFirst"),)
        else:  # a flat waveform, row after row: PyDM reshapes it by the width PV, and
            # must read it C-like (its default, Fortran-like, shows the image transposed)
            shape = (("widthChannel", "string", pv_name(screen, sizes[0], MACRO, name_ca=True)),
                     ("readingOrder", "enum", "PyDMImageView::Clike"))
        return "PyDMImageView", (tip, *size), (image, *shape, ("normalizeData", "bool", "true"))
    std: tuple[Prop, ...] = (tip, ("minimumSize", "size", "140x0"))
    if row.kind == "text":
        std += (("wordWrap", "bool", "true"),)
    fmt = (("displayFormat", "enum", "PyDMLabel::String"),) if is_string(spec) else ()
    return "PyDMLabel", std, (channel, ("showUnits", "bool", "true"), *fmt)


def _section(parent: ET.Element, screen: Screen, title: str, rows: tuple[Row, ...]) -> None:
    key = title.replace(" ", "_")
    box = _widget(parent, "QGroupBox", f"group_{key}", (("title", "string", title),))
    grid = ET.SubElement(box, "layout", {"class": "QGridLayout", "name": f"grid_{key}"})
    for i, row in enumerate(rows):
        name = row.suffix.replace(":", "_")
        spec = screen.spec(row)
        label = _widget(grid, "QLabel", f"{name}_label", (("text", "string", screen.label(row)),
                                                          ("toolTip", "string", spec.desc)))
        _place(grid, label, i, 0)
        cls, std, custom = _pydm_widget(screen, row)
        _place(grid, _widget(grid, cls, name, std, custom), i, 1)


def _place(grid: ET.Element, widget: ET.Element, row: int, column: int) -> None:
    """Give the <item> holding ``widget`` its grid cell (Designer writes them as attributes)."""
    for item in grid.iter("item"):
        if widget in list(item):
            item.set("row", str(row))
            item.set("column", str(column))
            return


def _spacer(layout: ET.Element, name: str) -> None:
    sp = ET.SubElement(ET.SubElement(layout, "item"), "spacer", name=name)
    o = ET.SubElement(sp, "property", name="orientation")
    ET.SubElement(o, "enum").text = "Qt::Vertical"
    hint = ET.SubElement(sp, "property", name="sizeHint", stdset="0")
    size = ET.SubElement(hint, "size")
    ET.SubElement(size, "width").text = "20"
    ET.SubElement(size, "height").text = "10"


def ui_text(screen: Screen) -> str:
    """The ``.ui`` XML of ``screen``."""
    ui = ET.Element("ui", version="4.0")
    ET.SubElement(ui, "class").text = "Form"
    form = ET.SubElement(ui, "widget", {"class": "QWidget", "name": "Form"})
    title = screen.title.replace("$(P)", MACRO)
    _prop(form, "windowTitle", "string", title, custom=False)
    top = ET.SubElement(form, "layout", {"class": "QGridLayout", "name": "main_layout"})
    head = _widget(top, "QLabel", "title", (("text", "string", f"<b>{title}</b>"),))
    _place(top, head, 0, 0)
    for item in top.findall("item"):
        if head in list(item):
            item.set("colspan", "2")
    for i, row in enumerate(screen.images):
        col = ET.SubElement(top, "item", row="1", column=str(i))
        box = ET.SubElement(col, "layout", {"class": "QVBoxLayout", "name": f"image_{i}"})
        _widget(box, "QLabel", row.suffix.replace(":", "_") + "_label",
                (("text", "string", screen.label(row)),))
        cls, std, custom = _pydm_widget(screen, row)
        _widget(box, cls, row.suffix.replace(":", "_"), std, custom)
    columns = sorted({s.column for s in screen.sections})
    for c in columns:
        cell = ET.SubElement(top, "item", row="2", column=str(c))
        box = ET.SubElement(cell, "layout", {"class": "QVBoxLayout", "name": f"column_{c}"})
        for section in screen.sections:
            if section.column == c:
                _section(box, screen, section.title, section.rows)
        if c == 0 and screen.link:
            _widget(box, "PyDMRelatedDisplayButton", "open_" + screen.link,
                    (("text", "string", f"Open {screen.link}"),),
                    (("filenames", "stringlist", screen.link + ".ui"),
                     ("macros", "stringlist", json.dumps({"P": MACRO})),
                     ("openInNewWindow", "bool", "true")))
        _spacer(box, f"spacer_{c}")
    custom_el = ET.SubElement(ui, "customwidgets")
    used = {el.get("class") for el in ui.iter("widget")}
    for cls, (base, header) in CUSTOM.items():
        if cls in used:
            cw = ET.SubElement(custom_el, "customwidget")
            ET.SubElement(cw, "class").text = cls
            ET.SubElement(cw, "extends").text = base
            ET.SubElement(cw, "header").text = header
    ET.SubElement(ui, "resources")
    ET.SubElement(ui, "connections")
    ET.indent(ui, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(ui, encoding="unicode") + "\n"
