"""RecursiveCascadeRegistration: deformable registration with recursive cascaded networks in 3D Slicer.

The panel is a thin layer over :class:`RecursiveCascadeRegistrationLib.RecursiveCascadeRegistrationLogic`,
which needs no Qt: the Python console and the tests call the same logic. Coordinate conventions:
docs/conventions.md in the source repository.
"""
import logging
import unittest
from pathlib import Path
from typing import Annotated

import numpy as np
import slicer
import vtk
from slicer import vtkMRMLGridTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.util import VTKObservationMixin

try:  # Inside Slicer; under slicer-core (MRML without Qt) only the logic and the test are usable.
    import qt
    from slicer.i18n import tr as _
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
except ImportError:
    qt = None

    class _WithoutQt:
        """Stand-in for Slicer's scripted-module base classes, which need Qt."""

        def __init__(self, *args, **kwargs):
            pass

    ScriptedLoadableModule = ScriptedLoadableModuleWidget = ScriptedLoadableModuleLogic = _WithoutQt

    class ScriptedLoadableModuleTest(unittest.TestCase):
        """Stand-in base class so that the self-test also runs under plain unittest/pytest."""

        def delayDisplay(self, message, msec=0):
            logging.info(message)

    def _(text):
        return text

    def parameterNodeWrapper(cls):
        return cls

    def WithinRange(minimum, maximum):
        return (minimum, maximum)

    def Choice(choices):
        return tuple(choices)

from RecursiveCascadeRegistrationLib import RegistrationCancelled
from RecursiveCascadeRegistrationLib import RecursiveCascadeRegistrationLogic as RegistrationLogic
from RecursiveCascadeRegistrationLib import choices, display, engine
from RecursiveCascadeRegistrationLib.logic import metricsTable

SAMPLE_NAME = "RecursiveCascadeRegistration phantom pair"


def registerSampleData() -> bool:
    """Offer the synthetic phantom pair (oblique, anisotropic grids) in the Sample Data module.

    Returns False where there is no SampleData module (e.g. under slicer-core). The pair is computed,
    not downloaded; with the model "none" (refinement alone) it registers without any trained model.
    """
    try:
        import SampleData
    except ImportError:
        return False
    from RecursiveCascadeRegistrationLib import testing

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Registration", sampleName=SAMPLE_NAME,
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "RecursiveCascadeRegistration.png"),
        customDownloader=lambda source: testing.addPhantomPair(slicer.mrmlScene))
    return True


class RecursiveCascadeRegistration(ScriptedLoadableModule):
    """Module description shown in Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Recursive Cascade Registration")
        self.parent.categories = [_("Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["RecursiveCascadeRegistration developers"]
        self.parent.helpText = _(
            "Deformable 3D registration with recursive cascaded networks (Zhao et al., ICCV 2019). "
            "Choose a fixed and a moving volume and press Apply: the result is a grid transform "
            "(apply, harden, invert or save it like any transform), the warped volume on the fixed "
            "grid and, optionally, the moving segmentation warped onto the fixed image.")
        self.parent.acknowledgementText = _(
            "Method: S. Zhao, Y. Dong, E. Chang, Y. Xu, Recursive Cascaded Networks for Unsupervised "
            "Medical Image Registration, ICCV 2019.")
        slicer.app.connect("startupCompleted()", registerSampleData)


@parameterNodeWrapper
class RecursiveCascadeRegistrationParameterNode:
    """Panel state, stored in the scene. ``model`` is a bundled model name, a checkpoint path, ``"none"``
    (refinement alone) or empty for the default model; ``cascades`` −1 means all of the model's cascades;
    ``refineIterations`` −1 and ``refineSimilarity`` "default" leave them to the model card, 0 iterations
    runs the network only."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedSegmentation: vtkMRMLSegmentationNode
    movingSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    cascades: Annotated[int, WithinRange(-1, 64)] = -1
    repeat: Annotated[int, WithinRange(1, 10)] = 1
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    fixedMask: vtkMRMLSegmentationNode
    initialAlignment: Annotated[str, Choice(choices.INITIAL_ALIGNMENTS)] = "none"
    symmetric: bool = False
    flipAverage: bool = False
    refineIterations: Annotated[int, WithinRange(-1, 1000)] = -1
    refineSimilarity: Annotated[str, Choice((choices.DEFAULT, *choices.REFINE_SIMILARITIES))] = choices.DEFAULT
    diffeomorphic: bool = False
    outputVolume: vtkMRMLScalarVolumeNode
    outputTransform: vtkMRMLGridTransformNode
    outputSegmentation: vtkMRMLSegmentationNode
    showGrid: bool = True
    showSegmentation: bool = True
    fade: Annotated[float, WithinRange(0.0, 1.0)] = 0.5


class RecursiveCascadeRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: widgets bound to the parameter node, Apply/Cancel, progress and metrics."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._cancelRequested = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RecursiveCascadeRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = RecursiveCascadeRegistrationLogic()

        self._bundledModels = engine.bundledModelNames()
        labels = {choices.DEFAULT: _("Default"), choices.NO_MODEL: _("None (refinement only)"),
                  choices.FROM_FILE: _("Checkpoint file...")}
        for choice in choices.modelChoices(self._bundledModels):
            self.ui.modelComboBox.addItem(labels.get(choice, choice), choice)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.modelPathLineEdit.currentPathChanged.connect(self.onModelChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            self._parameterNode.fixedVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onModelChanged(self, *args) -> None:
        """Model selector or path editor → parameter node."""
        choice = self.ui.modelComboBox.currentData
        self.ui.modelPathLineEdit.enabled = choice == choices.FROM_FILE
        if self._parameterNode:
            self._parameterNode.model = choices.modelFromChoice(choice, self.ui.modelPathLineEdit.currentPath)

    def showModel(self) -> None:
        """Parameter node → model selector and path editor (e.g. after loading a scene)."""
        model = self._parameterNode.model
        if choices.modelFromChoice(self.ui.modelComboBox.currentData, self.ui.modelPathLineEdit.currentPath) == model:
            return  # already shown (also keeps "Checkpoint file..." selected while its path is still empty)
        choice = choices.modelChoice(model, self._bundledModels)
        for widget in (self.ui.modelComboBox, self.ui.modelPathLineEdit):
            widget.blockSignals(True)
        self.ui.modelComboBox.currentIndex = self.ui.modelComboBox.findData(choice)
        if choice == choices.FROM_FILE:
            self.ui.modelPathLineEdit.currentPath = model
        self.ui.modelPathLineEdit.enabled = choice == choices.FROM_FILE
        for widget in (self.ui.modelComboBox, self.ui.modelPathLineEdit):
            widget.blockSignals(False)

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Enable Apply when the inputs are set; keep the views in step with the display options."""
        node = self._parameterNode
        ready = bool(node and node.fixedVolume and node.movingVolume)
        if node:
            self.showModel()
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = _("Register the moving volume to the fixed volume") if ready \
            else _("Select a fixed and a moving volume")
        if node and node.outputTransform and node.fixedVolume:
            display.showDeformationGrid(node.outputTransform, node.fixedVolume, visible=node.showGrid)
        if node and node.outputVolume and node.fixedVolume:
            display.showInSliceViews(node.fixedVolume, node.outputVolume, node.fade,
                                     node.outputSegmentation if node.showSegmentation else None,
                                     hiddenSegmentationNodes=(node.movingSegmentation, node.outputSegmentation))

    def onProgress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()  # lets Cancel be pressed; the logic then asks isCancelRequested

    def onCancelButton(self) -> None:
        self._cancelRequested = True

    def isCancelRequested(self) -> bool:
        return self._cancelRequested

    def onApplyButton(self) -> None:
        node = self._parameterNode
        self._cancelRequested = False
        self.ui.applyButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.ui.metricsTableWidget.setRowCount(0)
        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                if not engine.installMissingPackages(slicer.util.confirmOkCancelDisplay):
                    self.ui.statusLabel.text = _("Registration needs PyTorch; installation was declined.")
                    return
                try:
                    metrics = self.logic.registerVolumes(
                        node.fixedVolume, node.movingVolume,
                        model=node.model or None,
                        cascades=None if node.cascades < 0 else node.cascades,
                        repeat=node.repeat, device=node.device,
                        outputVolumeNode=node.outputVolume, outputTransformNode=node.outputTransform,
                        movingSegmentationNode=node.movingSegmentation,
                        fixedSegmentationNode=node.fixedSegmentation,
                        outputSegmentationNode=node.outputSegmentation,
                        fixedMaskNode=node.fixedMask, initialAlignment=node.initialAlignment,
                        symmetric=node.symmetric, flipAverage=node.flipAverage,
                        refineIterations=None if node.refineIterations < 0 else node.refineIterations,
                        refineSimilarity=None if node.refineSimilarity == choices.DEFAULT else node.refineSimilarity,
                        diffeomorphic=node.diffeomorphic,
                        progressCallback=self.onProgress, cancelCallback=self.isCancelRequested)
                except RegistrationCancelled:
                    self.ui.statusLabel.text = _("Cancelled.")
                    return
                node.outputVolume = self.logic.outputVolumeNode
                node.outputTransform = self.logic.outputTransformNode
                node.outputSegmentation = self.logic.outputSegmentationNode
                self.showMetrics(metrics)
        finally:
            self.ui.cancelButton.enabled = False
            self.onParameterNodeModified()

    def showMetrics(self, metrics: dict) -> None:
        rows = metricsTable(metrics)
        table = self.ui.metricsTableWidget
        table.setRowCount(len(rows))
        for row, (name, value) in enumerate(rows):
            table.setItem(row, 0, qt.QTableWidgetItem(name))
            table.setItem(row, 1, qt.QTableWidgetItem(value))


class RecursiveCascadeRegistrationLogic(RegistrationLogic, ScriptedLoadableModuleLogic):
    """The GUI-free logic (``RecursiveCascadeRegistrationLib``) plus the module's parameter node."""

    def __init__(self) -> None:
        RegistrationLogic.__init__(self)
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return RecursiveCascadeRegistrationParameterNode(super().getParameterNode())


class RecursiveCascadeRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Reload and Test, or ``Slicer --python-code`` with this class).

    It registers a synthetic phantom pair (oblique, anisotropic grids) through the same logic as the
    panel, with an analytic predictor, so it needs no trained model and takes a few seconds on a CPU.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RegisterPhantom()

    def test_RegisterPhantom(self):
        from RecursiveCascadeRegistrationLib import testing

        self.delayDisplay("Registering a synthetic phantom pair")
        fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(slicer.mrmlScene)
        logic = RecursiveCascadeRegistrationLogic()
        fractions = []
        metrics = logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(amplitude=1.5),
                                        movingSegmentationNode=movingSeg, fixedSegmentationNode=fixedSeg,
                                        progressCallback=lambda fraction, message: fractions.append(fraction))
        self.assertEqual(fractions[-1], 1.0)
        self.assertEqual(fractions, sorted(fractions))

        # The transform is an ordinary grid transform shown as a grid over the fixed volume.
        transformNode = logic.outputTransformNode
        self.assertIsInstance(transformNode.GetTransformFromParent(), slicer.vtkOrientedGridTransform)
        displayNode = transformNode.GetDisplayNode()
        self.assertEqual(displayNode.GetVisualizationMode(), slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GRID)
        self.assertIs(displayNode.GetRegionNode(), fixed)

        # Slicer's own resampling of the moving volume through the transform gives the warped volume.
        warped = slicer.util.arrayFromVolume(logic.outputVolumeNode)
        self.assertEqual(warped.shape, slicer.util.arrayFromVolume(fixed).shape)
        moving.SetAndObserveTransformNodeID(transformNode.GetID())
        resampled = slicer.vtkSlicerVolumesLogic.ResampleVolumeToReferenceVolume(moving, fixed)
        moving.SetAndObserveTransformNodeID(None)
        difference = np.abs(slicer.util.arrayFromVolume(resampled) - warped)
        self.assertLess(np.percentile(difference, 99), 1.0)  # intensities span 20…200

        # The warped segmentation, exported on the fixed grid, reproduces the reported Dice.
        for name in testing.SEGMENT_NAMES:
            warpedMask = self._mask(logic.outputSegmentationNode, name, fixed)
            fixedMask = self._mask(fixedSeg, name, fixed)
            dice = 2.0 * np.logical_and(warpedMask, fixedMask).sum() / (warpedMask.sum() + fixedMask.sum())
            self.assertAlmostEqual(metrics["dice"][name], dice, places=6)
        self.assertEqual(metrics["folding_fraction"], 0.0)
        self.delayDisplay("Test passed")

    @staticmethod
    def _mask(segmentationNode, segmentName, referenceVolumeNode):
        from RecursiveCascadeRegistrationLib.nodes import segmentationToLabelImage
        import SimpleITK as sitk

        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(segmentName)
        return sitk.GetArrayFromImage(segmentationToLabelImage(segmentationNode, [segmentId], referenceVolumeNode)) == 1
