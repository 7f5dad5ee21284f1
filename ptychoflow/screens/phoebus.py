"""Phoebus Display Builder files (``.bob``, display version 2.0.0) for a :class:`Screen`.

Widgets are placed absolutely, as Phoebus screens are: sections stack in
columns, each row a label and a widget; the images (the edge's frame and map, the
workflow's live phase) sit above.
Bare PV names use Phoebus' default data source (Channel Access); pvAccess
PVs carry ``pva://``. Tooltips show the PV name and its description from the
PV table.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ptychoflow.screens import Row, Screen, is_string, pv_name

MACRO = "$(P)"
LABEL_W, FIELD_W, ROW_H, GAP = 120, 240, 25, 6
COLUMN_W = LABEL_W + FIELD_W + 30
IMAGE_SIZE = 380
MARGIN = 10
STRING_FORMAT = "6"  # FormatOption.STRING: char waveforms (long strings) as text

# widget type -> widget version, as the current Phoebus writes them
VERSIONS = {"textentry": "3.0.0", "action_button": "3.0.0"}


def _widget(parent: ET.Element, kind: str, name: str, x: int, y: int, w: int, h: int,
            **props: str) -> ET.Element:
    el = ET.SubElement(parent, "widget", type=kind, version=VERSIONS.get(kind, "2.0.0"))
    for key, value in (("name", name), ("x", str(x)), ("y", str(y)), ("width", str(w)),
                       ("height", str(h))):
        ET.SubElement(el, key).text = value
    for key, value in props.items():
        ET.SubElement(el, key).text = value
    return el


def _font(el: ET.Element, size: float = 16.0) -> None:
    font = ET.SubElement(el, "font")
    ET.SubElement(font, "font", name="Header 3", family="Liberation Sans", style="BOLD",
                  size=f"{size:.1f}")


def _write_action(el: ET.Element, value: str, description: str) -> None:
    actions = ET.SubElement(el, "actions")
    action = ET.SubElement(actions, "action", type="write_pv")
    ET.SubElement(action, "pv_name").text = "$(pv_name)"
    ET.SubElement(action, "value").text = value
    ET.SubElement(action, "description").text = description


def _row(parent: ET.Element, screen: Screen, row: Row, x: int, y: int) -> None:
    spec = screen.spec(row)
    label = screen.label(row)
    name = row.suffix.replace(":", "_")
    pv = pv_name(screen, row, MACRO)
    tip = f"$(pv_name)\n{spec.desc}"
    _widget(parent, "label", f"{name}_label", x, y, LABEL_W, ROW_H, text=label,
            tooltip=spec.desc)
    fx = x + LABEL_W
    if row.kind == "button":
        el = _widget(parent, "action_button", name, fx, y, FIELD_W // 2, ROW_H, pv_name=pv,
                     text=label, tooltip=tip)
        _write_action(el, row.value, label)
    elif row.kind == "toggle":
        off, on = spec.enums if len(spec.enums) == 2 else ("Off", "On")
        _widget(parent, "bool_button", name, fx, y, FIELD_W // 2, ROW_H, pv_name=pv,
                off_label=off, on_label=on, tooltip=tip)
    elif row.kind == "combo":
        _widget(parent, "combo", name, fx, y, FIELD_W // 2, ROW_H, pv_name=pv, tooltip=tip)
    elif row.kind == "entry":
        props = {"format": STRING_FORMAT} if is_string(spec) else {}
        _widget(parent, "textentry", name, fx, y, FIELD_W, ROW_H, pv_name=pv, tooltip=tip,
                **props)
    elif row.kind == "led":
        off, on = spec.enums if len(spec.enums) == 2 else ("Off", "On")
        _widget(parent, "led", name, fx, y + 2, ROW_H - 4, ROW_H - 4, pv_name=pv,
                off_label=off, on_label=on, tooltip=tip)
    elif row.kind == "progress":
        _widget(parent, "progressbar", name, fx, y, FIELD_W, ROW_H, pv_name=pv, tooltip=tip)
    else:  # readback, text
        props = {"format": STRING_FORMAT} if is_string(spec) else {}
        _widget(parent, "textupdate", name, fx, y, FIELD_W, ROW_H, pv_name=pv, tooltip=tip,
                **props)


def _size_rules(el: ET.Element, screen: Screen, row: Row) -> None:
    """A waveform image's shape from its size PVs: Phoebus draws a number array with the
    widget's ``data_width`` x ``data_height``, which only a rule can take from a PV
    (an NTNDArray, a VImage, brings its own and needs none).
    """
    sizes = screen.size_rows(row)
    if sizes is None:
        return
    rules = ET.SubElement(el, "rules")
    for prop, size in zip(("data_width", "data_height"), sizes, strict=True):
        rule = ET.SubElement(rules, "rule", name=prop, prop_id=prop, out_exp="true")
        exp = ET.SubElement(rule, "exp", bool_exp="pv0 > 0")  # keep the last shape on 0
        ET.SubElement(exp, "expression").text = "pv0"
        ET.SubElement(rule, "pv_name").text = pv_name(screen, size, MACRO)


def bob_text(screen: Screen) -> str:
    """The ``.bob`` XML of ``screen``."""
    display = ET.Element("display", version="2.0.0")
    ET.SubElement(display, "name").text = screen.title
    title = _widget(display, "label", "title", MARGIN, MARGIN, 2 * COLUMN_W, 30,
                    text=screen.title)
    _font(title, 20.0)
    top = MARGIN + 40
    for i, row in enumerate(screen.images):
        x = MARGIN + i * (IMAGE_SIZE + 20)
        spec = screen.spec(row)
        _widget(display, "label", row.suffix.replace(":", "_") + "_label", x, top,
                IMAGE_SIZE, ROW_H, text=screen.label(row), tooltip=spec.desc)
        image = _widget(display, "image", row.suffix.replace(":", "_"), x, top + ROW_H,
                        IMAGE_SIZE, IMAGE_SIZE, pv_name=pv_name(screen, row, MACRO),
                        tooltip=f"$(pv_name)\n{spec.desc}")
        _size_rules(image, screen, row)
    if screen.images:
        top += ROW_H + IMAGE_SIZE + 20
    ys: dict[int, int] = {}
    for section in screen.sections:
        x = MARGIN + section.column * COLUMN_W
        y = ys.get(section.column, top)
        head = _widget(display, "label", f"section_{section.title}", x, y,
                       LABEL_W + FIELD_W, ROW_H, text=section.title)
        _font(head)
        y += ROW_H + GAP
        for row in section.rows:
            _row(display, screen, row, x, y)
            y += ROW_H + GAP
        ys[section.column] = y + 2 * GAP
    if screen.link:
        y = max(ys.values(), default=top)
        el = _widget(display, "action_button", "open_" + screen.link, MARGIN, y,
                     LABEL_W + FIELD_W // 2, ROW_H, text=f"Open {screen.link}")
        actions = ET.SubElement(el, "actions")
        action = ET.SubElement(actions, "action", type="open_display")
        ET.SubElement(action, "file").text = screen.link + ".bob"
        ET.SubElement(action, "target").text = "window"
        ET.SubElement(action, "description").text = f"Open {screen.link}"
    ET.indent(display, space="  ")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ET.tostring(display, encoding="unicode") + "\n")
