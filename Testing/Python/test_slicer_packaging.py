"""The extension's packaging: CMake lists, catalog entry, icons, .ui names, requirements.

These read files only (no Slicer needed), so they run everywhere.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "ProMISeModule"
MODULE_FILE = MODULE / "ProMISeModule.py"
UI_FILE = MODULE / "Resources" / "UI" / "ProMISeModule.ui"
PACKAGES = ("ProMISeLib", "ProMISeSlicer")
PROTECTED = {"torch", "numpy", "simpleitk", "torchvision", "vtk"}


def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not found"
    items = []
    for line in match.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        items.extend(line.split())
    return [i.replace("${MODULE_NAME}", "ProMISeModule") for i in items]


def module_cmake() -> str:
    return (MODULE / "CMakeLists.txt").read_text()


def listed_scripts() -> list[str]:
    return cmake_list(module_cmake(), "MODULE_PYTHON_SCRIPTS")


def source_scripts() -> set[str]:
    found = {"ProMISeModule.py"}
    for package in PACKAGES:
        found |= {p.relative_to(MODULE).as_posix() for p in (MODULE / package).rglob("*.py")}
    return found


# --- CMake ------------------------------------------------------------------------------------
def test_cmake_lists_every_python_file_of_the_module_and_its_libraries():
    listed = listed_scripts()
    assert len(listed) == len(set(listed)), "a file is listed twice"
    missing = sorted(source_scripts() - set(listed))
    stale = sorted(set(listed) - source_scripts())
    assert not missing and not stale, (
        "ProMISeModule/CMakeLists.txt MODULE_PYTHON_SCRIPTS is out of date; "
        f"add: {missing}, remove: {stale}. The full list:\n"
        + "\n".join(f"  {p}" for p in ["${MODULE_NAME}.py", *sorted(source_scripts() - {"ProMISeModule.py"})])
    )


def _imports(path: Path) -> set[str]:
    """Dotted module names ``path`` imports (relative imports resolved), any nesting level."""
    package = path.relative_to(MODULE).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    candidate = MODULE.joinpath(*parts)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None  # a name imported from a module, not a module


def test_every_file_the_module_imports_is_listed():
    listed = set(listed_scripts())
    todo, seen = [MODULE_FILE], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            target = _module_file(name)
            if target is None:
                continue
            # the package __init__ files on the way are imported too
            parts = target.relative_to(MODULE).parts
            for depth in range(1, len(parts)):
                init = MODULE.joinpath(*parts[:depth], "__init__.py")
                if init.is_file():
                    todo.append(init)
            todo.append(target)
    imported = {p.relative_to(MODULE).as_posix() for p in seen}
    assert "ProMISeSlicer/logic.py" in imported and "ProMISeLib/geometry.py" in imported
    assert not imported - listed, f"imported but not in CMakeLists.txt: {sorted(imported - listed)}"


def test_module_cmake_builds_a_scripted_module_with_tests_and_resources():
    text = module_cmake()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    assert set(resources) == {"Resources/Icons/ProMISeModule.png", "Resources/UI/ProMISeModule.ui",
                              "Resources/requirements.txt", "ProMISeLib/assets/litemedsam-prompter.json",
                              "ProMISeLib/assets/litemedsam-prompter.safetensors",
                              "ProMISeLib/assets/litemedsam-token-shift.json",
                              "ProMISeLib/assets/litemedsam-token-shift.safetensors"}
    for resource in resources:
        assert (MODULE / resource).is_file(), resource
    # every resource the code asks for is listed
    used = set(re.findall(r'resourcePath\(\s*"([^"]+)"', MODULE_FILE.read_text()))
    assert used and {f"Resources/{u}" for u in used} <= set(resources)
    assert (MODULE / "Testing" / "CMakeLists.txt").is_file()


def test_extension_cmake_has_the_catalog_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    values = dict(re.findall(r'set\((EXTENSION_[A-Z_]+)\s+"([^"]*)"\)', text))
    assert values["EXTENSION_HOMEPAGE"] == "https://github.com/MedICL-VU/SlicerProMISe"
    for key in ("EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert values.get(key), key
    assert values["EXTENSION_ICONURL"].endswith("ProMISeExtension/ProMISe.png")
    assert values["EXTENSION_DEPENDS"] == "PyTorch"
    assert re.search(r"project\(ProMISe\)", text)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(ProMISeModule)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line


# --- catalog entry and icons ------------------------------------------------------------------
def test_catalog_entry_follows_schema_v1_0_1():
    entry = json.loads((REPO / "ProMISeExtension" / "ProMISe.json").read_text())
    allowed = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
               "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
    assert set(entry) <= set(allowed), f"not in the schema: {set(entry) - set(allowed)}"
    assert {"$schema", "category", "scm_url"} <= set(entry)
    for key, value in entry.items():
        assert isinstance(value, allowed[key]), key
    assert entry["$schema"] == (
        "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json"
    )
    assert entry["category"] == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_revision"] == "main" and entry["tier"] == 1
    # index rules: the extension (file) name must not start with "Slicer"; the repository's should
    assert not "ProMISe".startswith("Slicer")
    assert entry["scm_url"].rstrip("/").removesuffix(".git").split("/")[-1].startswith("Slicer")


@pytest.mark.parametrize("path", ["ProMISeExtension/ProMISe.png", "ProMISeModule/Resources/Icons/ProMISeModule.png"])
def test_icons_are_128_pixel_pngs(path):
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(REPO / path) as image:
        assert image.format == "PNG" and image.size == (128, 128)
        import numpy as np

        colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 50  # a picture, not a blank square


# --- the panel --------------------------------------------------------------------------------
def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _property(widget: ET.Element, name: str) -> str | None:
    """The text of a widget's property (string, bool or enum), or None."""
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return "".join(prop.itertext()).strip()
    return None


def test_every_widget_the_code_uses_exists_in_the_ui_file():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text()))
    assert {"segmentButton", "cancelButton", "undoButton", "progressBar", "statusLabel"} <= used
    missing = used - set(ui_widgets())
    assert not missing, f"used in ProMISeModule.py but absent from the .ui: {sorted(missing)}"


def test_ui_offers_what_the_issue_asks_for():
    widgets = ui_widgets()
    classes = {name: w.get("class") for name, w in widgets.items()}
    assert classes["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert classes["positivePlaceWidget"] == classes["negativePlaceWidget"] == "qSlicerMarkupsPlaceWidget"
    assert classes["outputSegmentationSelector"] == "qMRMLNodeComboBox"
    assert classes["modelComboBox"] == classes["deviceComboBox"] == classes["runtimeComboBox"] == "QComboBox"
    runtime_tip = next(p.findtext("string") for p in widgets["runtimeComboBox"].findall("property")
                       if p.get("name") == "toolTip")
    assert "ONNX Runtime" in runtime_tip and "PyTorch" in runtime_tip
    # how a click becomes box prompts; ProMISe 3D models: their warning and the add-by-hand flow
    assert classes["promptsComboBox"] == "QComboBox" and classes["promptsLabel"] == "QLabel"
    prompts_tip = _property(widgets["promptsComboBox"], "toolTip")
    assert all(word in prompts_tip for word in ("Learned", "Rule-based", "Auto", "status line"))
    assert classes["modelWarningLabel"] == classes["manualModelLabel"] == "QLabel"
    assert _property(widgets["modelWarningLabel"], "wordWrap") == "true"
    assert _property(widgets["manualModelLabel"], "openExternalLinks") == "true"  # the download page opens
    assert classes["addCheckpointButton"] == "QPushButton"
    assert _property(widgets["addCheckpointButton"], "text") == "Add checkpoint…"
    assert _property(widgets["addCheckpointButton"], "enabled") == "false"  # until a hand-added model is chosen
    models_section = widgets["modelsCollapsibleButton"]
    assert {"manualModelLabel", "addCheckpointButton"} <= {w.get("name") for w in models_section.iter("widget")}
    assert classes["progressBar"] == "QProgressBar" and classes["statusLabel"] == "QLabel"
    assert classes["autoUpdateCheckBox"] == "QCheckBox" and classes["removeModelsButton"] == "QPushButton"
    # widgets bound to the parameter node name real fields of ProMISeModuleParameterNode
    tree = ast.parse(MODULE_FILE.read_text())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProMISeModuleParameterNode")
    fields = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    assert set(bound.values()) == {"inputVolume", "positivePoints", "negativePoints", "outputSegmentation",
                                   "autoUpdate"}
    assert set(bound.values()) <= fields
    # every custom widget class used is declared
    declared = {c.findtext("class") for c in ET.parse(UI_FILE).getroot().iter("customwidget")}
    used_custom = {c for c in classes.values() if c.startswith(("q", "ctk"))}
    assert used_custom <= declared


# --- module conventions -----------------------------------------------------------------------
def test_top_level_python_files_are_modules_named_like_their_class():
    """Slicer's scanner loads every .py at the top of the module folder as a module."""
    for path in MODULE.glob("*.py"):
        classes = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ClassDef)}
        assert path.stem in classes, f"{path.name} would be scanned as a module but has no class {path.stem}"
        for suffix in ("Widget", "Test"):
            assert path.stem + suffix in classes


def test_module_does_no_work_at_import_or_construction():
    tree = ast.parse(MODULE_FILE.read_text())
    for statement in tree.body:  # module level: imports, classes, functions, constants only
        assert isinstance(statement, (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.Assign,
                                      ast.Expr)), ast.dump(statement)[:80]
        if isinstance(statement, ast.Expr):
            assert isinstance(statement.value, ast.Constant)  # the docstring
        if isinstance(statement, ast.Assign):
            assert not any(isinstance(n, ast.Call) for n in ast.walk(statement)), ast.unparse(statement)
    module_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProMISeModule")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    calls = {ast.unparse(c.func) for c in ast.walk(init) if isinstance(c, ast.Call)}
    assert calls <= {"ScriptedLoadableModule.__init__", "_", "translate"}, calls


def test_slicer_helpers_import_no_qt_and_nothing_heavy():
    for path in (MODULE / "ProMISeSlicer").glob("*.py"):
        top = {name.split(".")[0] for name in _imports(path)}
        assert not top & {"qt", "ctk", "torch"}, f"{path.name} imports {top & {'qt', 'ctk', 'torch'}}"
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ProMISeSlicer.logic, ProMISeSlicer.batch, "
        "ProMISeSlicer.install; heavy = {'torch', 'pooch', 'segment_anything'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(MODULE)], check=True, timeout=120)


# --- dependencies -----------------------------------------------------------------------------
def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_requirements_match_pyproject_minus_what_slicer_owns():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = [r for r in project["dependencies"] if _name(r) not in PROTECTED]
    expected += project.get("optional-dependencies", {}).get("onnx", [])
    lines = [line.strip() for line in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    normalise = lambda reqs: {_name(r): r.replace(" ", "") for r in reqs}  # noqa: E731
    assert normalise(lines) == normalise(expected)
    assert not {_name(r) for r in lines} & PROTECTED
    assert {"segment-anything", "scikit-image", "scipy", "pooch", "tqdm", "slicerio", "safetensors",
            "onnxruntime"} <= {_name(r) for r in lines}
