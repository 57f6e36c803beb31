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
#: The Slicer-side files that may import Qt (the panel, its parts and the Segment Editor effect); the rest are GUI-free.
QT_FILES = {"widget.py", "models_panel.py", "points_panel.py", "poller.py", "segment_editor_effect.py", "effect.py"}


def panel_sources() -> str:
    """The module file and the Slicer-side package: where the panel's code lives."""
    return "\n".join(p.read_text() for p in [MODULE_FILE, *sorted((MODULE / "ProMISeSlicer").glob("*.py"))])
PROTECTED = {"torch", "numpy", "simpleitk", "torchvision", "vtk"}
#: Needed by the CLI only (``promise batch`` runs on Dask; Slicer's ``segmentBatch`` runs in-process).
CLI_ONLY = {"dask"}


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
    assert "ProMISeSlicer/logic.py" in imported and "ProMISeLib/io/geometry.py" in imported
    assert not imported - listed, f"imported but not in CMakeLists.txt: {sorted(imported - listed)}"


def test_module_cmake_builds_a_scripted_module_with_tests_and_resources():
    text = module_cmake()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    assert {"Resources/Icons/ProMISeModule.png", "Resources/UI/ProMISeModule.ui", "Resources/requirements.txt",
            "ProMISeLib/assets/litemedsam-prompter.json",
            "ProMISeLib/assets/litemedsam-prompter.safetensors"} <= set(resources)
    assert len(resources) == len(set(resources)), "a resource is listed twice"
    for resource in resources:
        assert (MODULE / resource).is_file(), resource
    # every resource the code asks for is listed
    used = set(re.findall(r'resourcePath\(\s*"([^"]+)"', panel_sources()))
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
SCHEMA_COPY = REPO / "Testing" / "Data" / "slicer-extension-catalog-entry-schema-v1.0.1.json"


def test_catalog_entry_validates_against_slicers_schema_v1_0_1():
    """ProMISe.json against Slicer's catalog-entry schema (a copy in Testing/Data; source in its $comment)."""
    jsonschema = pytest.importorskip("jsonschema", reason="pip install -e '.[test]' (jsonschema)")
    schema = json.loads(SCHEMA_COPY.read_text())
    assert "github.com/Slicer/Slicer" in schema["$comment"]
    validator = jsonschema.Draft7Validator(schema)
    validator.check_schema(schema)
    entry = json.loads((REPO / "ProMISeExtension" / "ProMISe.json").read_text())
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(entry)]
    assert not errors, errors
    assert entry["$schema"] == schema["$id"].rstrip("#")  # it names the schema it follows
    # the schema is a real check: an unknown key and a wrong tier are refused
    assert not validator.is_valid({**entry, "homepage": "x"}) and not validator.is_valid({**entry, "tier": 2})
    assert entry["category"] == "Segmentation"
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_revision"] == "main" and entry["tier"] == 1
    # index rules: the extension (file) name must not start with "Slicer"; the repository's should
    assert not "ProMISe".startswith("Slicer")
    assert entry["scm_url"].rstrip("/").removesuffix(".git").split("/")[-1].startswith("Slicer")


def test_licence_at_the_root_is_apache_2_0_as_pyproject_says():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text and len(text) > 10_000


#: Slicer's form for a contributor: "First Last (Affiliation)"; more than one name part, no "developers"/"team".
CONTRIBUTOR = re.compile(r"^[A-Z][\w'.-]*(?: [A-Z][\w'.-]*)+ \([^()]+\)$")


def module_contributors() -> list[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and ast.unparse(node.targets[0]) == "self.parent.contributors"):
            return list(ast.literal_eval(node.value))
    raise AssertionError("ProMISeModule.py sets no self.parent.contributors")


def test_contributors_are_in_slicers_first_last_affiliation_form():
    text = (REPO / "CMakeLists.txt").read_text()
    listed = re.search(r'set\(EXTENSION_CONTRIBUTORS\s+"([^"]*)"\)', text).group(1)
    people = [p.strip() for p in re.split(r",\s*(?![^()]*\))", listed)]
    assert len(people) >= 2 and "Hao Li (Vanderbilt University)" in people
    for person in people:
        assert CONTRIBUTOR.match(person), person
        assert not re.search(r"developers|team|contributors", person, re.I), person
    assert not CONTRIBUTOR.match("ProMISe developers") and not CONTRIBUTOR.match("MedICL, Vanderbilt University")
    assert module_contributors() == people  # the module lists the same people, in the same form


def test_minimum_slicer_version_is_declared_and_matches_the_run_time_check():
    text = (REPO / "CMakeLists.txt").read_text()
    declared = re.search(r'set\(PROMISE_MINIMUM_SLICER_VERSION "(\d+)\.(\d+)"\)', text)
    assert declared, "the root CMakeLists.txt declares no minimum Slicer version"
    assert re.search(r"VERSION_LESS\s+\"\$\{PROMISE_MINIMUM_SLICER_VERSION\}\"\)\s*\n\s*message\(FATAL_ERROR", text)
    if str(MODULE) not in sys.path:
        sys.path.insert(0, str(MODULE))
    from ProMISeSlicer import install

    assert tuple(int(v) for v in declared.groups()) == install.MINIMUM_SLICER == (5, 10)
    assert install.MINIMUM_PYTHON == (3, 10)


def test_screenshot_of_the_catalog_entry_is_in_the_repository_and_the_readme():
    text = (REPO / "CMakeLists.txt").read_text()
    url = re.search(r'set\(EXTENSION_SCREENSHOTURLS\s+"([^"]*)"\)', text).group(1)
    relative = url.split("/main/", 1)[1]
    image_module = pytest.importorskip("PIL.Image")
    with image_module.open(REPO / relative) as image:
        assert image.format == "PNG" and image.size[0] >= 600
    assert f"]({relative})" in (REPO / "README.md").read_text()


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
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", panel_sources()))
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
    assert _property(widgets["addCheckpointButton"], "text") == "Use a local file…"
    assert _property(widgets["addCheckpointButton"], "enabled") == "false"  # until a hand-added model is chosen
    models_section = widgets["modelsCollapsibleButton"]
    assert {"manualModelLabel", "addCheckpointButton"} <= {w.get("name") for w in models_section.iter("widget")}
    assert classes["progressBar"] == "QProgressBar" and classes["statusLabel"] == "QLabel"
    assert classes["autoUpdateCheckBox"] == "QCheckBox" and classes["removeModelsButton"] == "QPushButton"
    # widgets bound to the parameter node name real fields of ProMISeModuleParameterNode
    tree = ast.parse(panel_sources())
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProMISeModuleParameterNode")
    fields = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.find("string").text
    required = {"inputVolume", "positivePoints", "negativePoints", "outputSegmentation", "autoUpdate"}
    assert required <= set(bound.values())
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
        # the panel and the self-test may live in ProMISeSlicer/: Slicer finds them in the module's namespace
        for suffix in ("Widget", "Test"):
            assert path.stem + suffix in classes | _imported_names(path), f"{path.name} has no {path.stem}{suffix}"


def _imported_names(path: Path) -> set[str]:
    return {alias.asname or alias.name for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.ImportFrom) for alias in node.names}


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
    calls = [c for c in ast.walk(init) if isinstance(c, ast.Call)]
    names = {ast.unparse(c.func) for c in calls}
    assert names <= {"ScriptedLoadableModule.__init__", "_", "translate", "getattr", "hasattr", "app.connect",
                     "slicer.app.connect"}, names
    for call in calls:  # the only deferred work: register the Segment Editor effect once Slicer has started
        if ast.unparse(call.func).endswith("app.connect"):
            assert ast.literal_eval(call.args[0]) == "startupCompleted()"


def test_slicer_helpers_import_no_qt_and_nothing_heavy():
    for path in (MODULE / "ProMISeSlicer").glob("*.py"):
        anywhere = {name.split(".")[0] for name in _imports(path)}
        tree = ast.parse(path.read_text())
        top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import)
                     for alias in node.names}
        top_level |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert "torch" not in top_level, f"{path.name} imports torch when it is imported"
        if path.name not in QT_FILES:  # the logic, the installer, the worker, the self-test: GUI-free
            assert not anywhere & {"qt", "ctk", "torch"}, f"{path.name} imports {anywhere & {'qt', 'ctk', 'torch'}}"
    pytest.importorskip("slicer", reason="slicer-core is not installed")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ProMISeSlicer.logic, ProMISeSlicer.batch, "
        "ProMISeSlicer.install; heavy = {'torch', 'pooch', 'segment_anything', 'dask'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(MODULE)], check=True, timeout=120)


# --- the Slicer layer's house rules (docs/architecture.md) --------------------------------------
def test_slicer_layer_names_module_functions_in_snake_case_and_the_console_api_in_camel_case():
    snake = re.compile(r"_?[a-z][a-z0-9_]*")
    for path in sorted((MODULE / "ProMISeSlicer").glob("*.py")):
        tree = ast.parse(path.read_text())
        functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
        assert all(snake.fullmatch(name) for name in functions), f"{path.name}: {functions}"
    logic = next(node for node in ast.parse((MODULE / "ProMISeSlicer" / "logic.py").read_text()).body
                 if isinstance(node, ast.ClassDef) and node.name == "ProMISeModuleLogic")
    methods = [node.name for node in logic.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]
    assert {"segment", "prepareRun", "computeRun", "applyRun", "segmentFiles", "segmentBatch", "undo"} <= set(methods)
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9]*", name) for name in methods), methods


def test_every_file_of_the_slicer_layer_is_at_most_400_lines():
    files = sorted((MODULE / "ProMISeSlicer").glob("*.py"))
    assert {"logic.py", "run.py", "scene.py", "widget.py", "install.py"} <= {path.name for path in files}
    long = {path.name: n for path in files if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"over 400 lines: {long}"


# --- dependencies -----------------------------------------------------------------------------
def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_requirements_match_pyproject_minus_what_slicer_owns():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    expected = [r for r in project["dependencies"] if _name(r) not in PROTECTED | CLI_ONLY]
    expected += project.get("optional-dependencies", {}).get("onnx", [])
    lines = [line.strip() for line in (MODULE / "Resources" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.strip().startswith("#")]
    normalise = lambda reqs: {_name(r): r.replace(" ", "") for r in reqs}  # noqa: E731
    assert normalise(lines) == normalise(expected)
    assert not {_name(r) for r in lines} & PROTECTED
    assert {"segment-anything", "scikit-image", "scipy", "pooch", "tqdm", "slicerio", "safetensors",
            "onnxruntime"} <= {_name(r) for r in lines}
