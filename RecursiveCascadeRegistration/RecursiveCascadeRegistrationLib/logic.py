"""GUI-free registration logic on MRML nodes: the module panel and the Python console both call it.

``RecursiveCascadeRegistrationLogic().registerVolumes(fixed, moving, ...)`` converts the nodes to
SimpleITK images, runs ``rcreg.register`` and turns its result back into Slicer nodes: a grid transform
(RAS, "from parent" = resampling direction; docs/conventions.md), the warped volume on the fixed grid
and, when a moving segmentation is given, that segmentation warped onto the fixed grid.

Errors keep the engine's one-line messages, in this interface's words: where the engine names one of
its command-line flags (``--model``), the message names the parameter of :meth:`registerVolumes`
(``model``) instead.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Optional

import numpy as np
import SimpleITK as sitk

from . import display
from .engine import importEngine
from .nodes import (
    nodeIds,
    gridTransformFromDisplacement,
    removeNodesAddedSince,
    segmentationToLabelImage,
    updateSegmentationFromLabelImage,
    updateVolumeNodeFromImage,
    volumeNodeToImage,
)

__all__ = ["RecursiveCascadeRegistrationLogic", "RegistrationCancelled", "metricsTable", "interfaceMessage"]

ProgressCallback = Callable[[float, str], None]

# The engine's command-line flags whose registerVolumes parameter is not simply their camelCase form.
_FLAG_PARAMETERS = {"--refine": "refineIterations", "--mask": "fixedMaskNode",
                    "--moving-labels": "movingSegmentationNode", "--fixed-labels": "fixedSegmentationNode"}


class RegistrationCancelled(RuntimeError):
    """Stops a run (raised by a progress callback, or for a cancel callback); the run's new nodes are removed."""


def interfaceMessage(message: str) -> str:
    """``message`` with the engine's command-line flags replaced by :meth:`registerVolumes`' parameter names."""
    def parameter(match: re.Match) -> str:
        first, *rest = match.group(1).split("-")
        return _FLAG_PARAMETERS.get(match.group(0), first + "".join(word.capitalize() for word in rest))

    return re.sub(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", parameter, message)


@contextlib.contextmanager
def _inInterfaceTerms(cancelled: type) -> Iterator[None]:
    """Re-raise the engine's errors with :func:`interfaceMessage`, its ``cancelled`` as RegistrationCancelled."""
    try:
        yield
    except cancelled as error:
        raise RegistrationCancelled(str(error)) from error
    except Exception as error:
        if len(error.args) == 1 and isinstance(error.args[0], str):
            error.args = (interfaceMessage(error.args[0]),)
        raise


def _segmentIds(segmentationNode) -> list[str]:
    segmentation = segmentationNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def _segmentName(segmentationNode, segmentId: str) -> str:
    return segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()


def _matchSegments(movingSegmentation, fixedSegmentation) -> list[tuple[str, Optional[str]]]:
    """``(movingSegmentId, fixedSegmentId or None)`` for every moving segment, matched by segment name."""
    fixedByName = {_segmentName(fixedSegmentation, sid): sid for sid in _segmentIds(fixedSegmentation)}
    return [(sid, fixedByName.get(_segmentName(movingSegmentation, sid))) for sid in _segmentIds(movingSegmentation)]


class RecursiveCascadeRegistrationLogic:
    """Deformable registration of two volume nodes with a recursive cascaded network.

    After :meth:`registerVolumes`, ``outputVolumeNode``, ``outputTransformNode`` and
    ``outputSegmentationNode`` hold the nodes that received the results (given or created).
    """

    def __init__(self):
        self.outputVolumeNode = None
        self.outputTransformNode = None
        self.outputSegmentationNode = None

    def registerVolumes(
        self,
        fixedVolumeNode,
        movingVolumeNode,
        *,
        model: Any = None,
        cascades: Optional[int] = None,
        repeat: int = 1,
        device: str = "auto",
        outputVolumeNode=None,
        outputTransformNode=None,
        movingSegmentationNode=None,
        fixedSegmentationNode=None,
        outputSegmentationNode=None,
        fixedMaskNode=None,
        initialAlignment: str = "none",
        symmetric: bool = False,
        flipAverage: bool = False,
        refineIterations: Optional[int] = None,
        refineSimilarity: Optional[str] = None,
        refineWeight: Optional[float] = None,
        refineRegularization: Optional[str] = None,
        refineLevels: Optional[int] = None,
        refineSpacing: Optional[float] = None,
        diffeomorphic: bool = False,
        progressCallback: Optional[ProgressCallback] = None,
        cancelCallback: Optional[Callable[[], bool]] = None,
    ) -> dict:
        """Register ``movingVolumeNode`` to ``fixedVolumeNode`` and return the run's metrics.

        Args:
            fixedVolumeNode, movingVolumeNode: scalar volume nodes; results live on the fixed volume's grid.
            model: ``None`` (the bundled model for the fixed image's modality and region), a bundled model
                name, ``"none"`` (no network: refinement alone), a checkpoint path, a
                ``RecursiveCascadeNetwork`` or a predictor callable (``rcreg.models.resolve_model``).
            cascades, repeat, device: passed to ``rcreg.register``.
            outputVolumeNode, outputTransformNode, outputSegmentationNode: where the warped volume, the
                grid transform and the warped segmentation go (created when not given).
            movingSegmentationNode, fixedSegmentationNode: segmentations to warp and to score (Dice, HD95,
                segments matched by name).
            fixedMaskNode: a segmentation whose segments, together, mark the fixed region to register.
            initialAlignment: ``"none"``, ``"geometry"`` or ``"mass"``.
            symmetric: average the network's prediction with the inverse of its prediction for the swapped
                pair (inverse-consistent; ``rcreg.register``'s ``symmetric``).
            flipAverage: average the network's predictions for the pair as it is and mirrored along each axis
                (``rcreg.register``'s ``flip_average``: lower error and drift for brains, four network passes).
            refineIterations: test-time refinement at the finest level (``None``: the model card's
                default, ``0``: the network only).
            refineSimilarity, refineWeight, refineRegularization, refineLevels, refineSpacing: override the
                card's refinement defaults when given (``ncc``/``pearson``/``mse``/``mi``;
                ``diffusion``/``bending``; spacing in mm).
            diffeomorphic: refine a stationary velocity field (det J > 0).
            progressCallback: ``progressCallback(fraction, message)`` as the run advances; raising
                :class:`RegistrationCancelled` from it stops the run.
            cancelCallback: ``cancelCallback()`` returning true (checked at every progress report and
                refinement iteration) stops the run.

        Returns:
            The engine's metrics (``rcreg.register``): ``folding_fraction`` (share of fixed-grid voxels
            with det J ≤ 0), correlations, timings, …; with both segmentations also ``dice``,
            ``dice_before`` and ``hd95_mm`` keyed by segment name, and their ``*_mean``.

        Raises:
            RegistrationCancelled: the run was cancelled.
            ValueError: a missing volume, a fixed segmentation without a moving one, a linear output
                transform, or an input the engine refuses (one line naming it).
        """
        if fixedVolumeNode is None or movingVolumeNode is None:
            raise ValueError("select both a fixed and a moving volume")
        if fixedSegmentationNode is not None and movingSegmentationNode is None:
            raise ValueError("a fixed segmentation needs a moving segmentation to compare with")
        if outputTransformNode is not None and outputTransformNode.IsA("vtkMRMLLinearTransformNode"):
            raise ValueError(f"transform '{outputTransformNode.GetName()}' is linear: choose a grid transform node")
        rcreg = importEngine()
        from rcreg.fields import translated_field
        from rcreg.refinement import Cancelled

        def report(fraction: float, message: str) -> None:
            if progressCallback is not None:
                progressCallback(fraction, message)
            if cancelCallback is not None and cancelCallback():
                raise RegistrationCancelled("registration cancelled")

        refine = {"diffeomorphic": diffeomorphic, **{name: value for name, value in (
            ("iterations", refineIterations), ("similarity", refineSimilarity), ("weight", refineWeight),
            ("regularization", refineRegularization), ("levels", refineLevels), ("spacing", refineSpacing))
            if value is not None}}
        scene = fixedVolumeNode.GetScene()
        nodesBefore = nodeIds(scene)

        def newNode(className: str, name: str):
            return scene.AddNewNodeByClass(className, scene.GenerateUniqueName(name))

        try:
            report(0.0, "Converting volumes")
            fixed = volumeNodeToImage(fixedVolumeNode)
            moving = volumeNodeToImage(movingVolumeNode)
            pairs, movingLabels, fixedLabels = [], None, None
            if movingSegmentationNode is not None:
                if fixedSegmentationNode is not None:
                    pairs = _matchSegments(movingSegmentationNode, fixedSegmentationNode)
                else:
                    pairs = [(sid, None) for sid in _segmentIds(movingSegmentationNode)]
                if not pairs:
                    raise ValueError(f"segmentation '{movingSegmentationNode.GetName()}' has no segments")
                movingLabels = segmentationToLabelImage(
                    movingSegmentationNode, [movingId for movingId, _ in pairs], movingVolumeNode)
                if fixedSegmentationNode is not None:
                    matched = [(n + 1, fixedId) for n, (_, fixedId) in enumerate(pairs) if fixedId is not None]
                    if not matched:
                        raise ValueError(f"no segment name of '{movingSegmentationNode.GetName()}' occurs in "
                                         f"'{fixedSegmentationNode.GetName()}'")
                    fixedLabels = self._fixedLabelImage(fixedSegmentationNode, matched, fixedVolumeNode)
            mask = None
            if fixedMaskNode is not None:
                if not _segmentIds(fixedMaskNode):
                    raise ValueError(f"mask segmentation '{fixedMaskNode.GetName()}' has no segments")
                mask = segmentationToLabelImage(fixedMaskNode, _segmentIds(fixedMaskNode), fixedVolumeNode)

            report(0.05, "Registering")
            with _inInterfaceTerms(Cancelled):
                result = rcreg.register(
                    moving, fixed, model=model, cascades=cascades, repeat=repeat, device=device,
                    moving_labels=movingLabels, fixed_labels=fixedLabels, mask=mask,
                    initial_alignment=initialAlignment, symmetric=symmetric, flip_average=flipAverage, refine=refine, cancel=cancelCallback,
                    progress=lambda fraction, message: report(0.05 + 0.85 * fraction, message),
                )

            report(0.9, "Creating the output nodes")
            if outputTransformNode is None:
                outputTransformNode = newNode("vtkMRMLGridTransformNode", f"{movingVolumeNode.GetName()} to "
                                                                           f"{fixedVolumeNode.GetName()}")
            # The compact grid the engine computed the field on (not the dense field: 100× smaller).
            compact = translated_field(result.field, result.translation)
            outputTransformNode.SetAndObserveTransformFromParent(gridTransformFromDisplacement(compact))
            display.showDeformationGrid(outputTransformNode, fixedVolumeNode)

            if outputVolumeNode is None:
                outputVolumeNode = newNode("vtkMRMLScalarVolumeNode", f"{movingVolumeNode.GetName()} registered")
            updateVolumeNodeFromImage(outputVolumeNode, result.warped)
            outputVolumeNode.CreateDefaultDisplayNodes()

            if movingSegmentationNode is not None:
                outputSegmentationNode = self._warpedSegmentation(
                    movingSegmentationNode, [movingId for movingId, _ in pairs], result.warped_labels,
                    fixedVolumeNode, outputSegmentationNode, newNode)

            metrics = self._metrics(result.metrics, movingSegmentationNode, pairs)
            report(1.0, "Done")
        except BaseException:
            removeNodesAddedSince(scene, nodesBefore)
            raise
        self.outputVolumeNode = outputVolumeNode
        self.outputTransformNode = outputTransformNode
        self.outputSegmentationNode = outputSegmentationNode
        return metrics

    @staticmethod
    def _fixedLabelImage(fixedSegmentationNode, matched: list[tuple[int, str]], fixedVolumeNode):
        """Fixed label image whose label values follow the moving segments' order (unmatched: absent)."""
        exported = segmentationToLabelImage(fixedSegmentationNode, [fixedId for _, fixedId in matched], fixedVolumeNode)
        lookup = np.zeros(len(matched) + 1, dtype=np.uint16)
        lookup[1:] = [label for label, _ in matched]
        relabelled = sitk.GetImageFromArray(lookup[sitk.GetArrayFromImage(exported)])
        relabelled.CopyInformation(exported)
        return relabelled

    @staticmethod
    def _warpedSegmentation(movingSegmentationNode, movingIds, warpedLabels, fixedVolumeNode,
                            outputSegmentationNode, newNode):
        """Fill a segmentation (created if needed) with the warped labels, copying names and colours."""
        if outputSegmentationNode is None:
            outputSegmentationNode = newNode("vtkMRMLSegmentationNode",
                                             f"{movingSegmentationNode.GetName()} registered")
        outputSegmentationNode.CreateDefaultDisplayNodes()
        outputSegmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(fixedVolumeNode)
        segmentation = outputSegmentationNode.GetSegmentation()
        segmentation.RemoveAllSegments()
        source = movingSegmentationNode.GetSegmentation()
        outputIds = [segmentation.AddEmptySegment("", source.GetSegment(sid).GetName(), source.GetSegment(sid).GetColor())
                     for sid in movingIds]
        updateSegmentationFromLabelImage(outputSegmentationNode, warpedLabels, outputIds)
        return outputSegmentationNode

    @staticmethod
    def _metrics(engineMetrics: dict, movingSegmentationNode, pairs) -> dict:
        """The engine's metrics with per-label entries keyed by segment name, matched segments only.

        The engine scores every label present in either label map; moving segments without a fixed
        counterpart are dropped here and the means recomputed over the matched ones.
        """
        metrics = dict(engineMetrics)
        if "dice" not in metrics:
            return metrics
        names = {str(n + 1): _segmentName(movingSegmentationNode, movingId)
                 for n, (movingId, fixedId) in enumerate(pairs) if fixedId is not None}
        for key, meanKey in (("dice", "dice_mean"), ("dice_before", "dice_mean_before"), ("hd95_mm", "hd95_mm_mean")):
            if key in metrics:
                metrics[key] = {names[label]: float(value) for label, value in metrics[key].items() if label in names}
                values = [v for v in metrics[key].values() if not np.isnan(v)]
                metrics[meanKey] = float(np.mean(values)) if values else float("nan")
        return metrics


def metricsTable(metrics: dict) -> list[tuple[str, str]]:
    """Rows ``(quantity, value)`` summarising :meth:`RecursiveCascadeRegistrationLogic.registerVolumes`' metrics."""
    rows = []
    if "folding_fraction" in metrics:
        rows.append(("Folded voxels (det J ≤ 0)", f"{100 * metrics['folding_fraction']:.3f} %"))
    if "correlation_after" in metrics:
        rows.append(("Correlation before → after",
                     f"{metrics.get('correlation_before', float('nan')):.3f} → {metrics['correlation_after']:.3f}"))
    before = metrics.get("dice_before", {})
    for name, value in metrics.get("dice", {}).items():
        rows.append((f"Dice {name}", f"{before.get(name, float('nan')):.3f} → {value:.3f}"))
    for name, value in metrics.get("hd95_mm", {}).items():
        rows.append((f"HD95 {name}", f"{value:.2f} mm"))
    levels = metrics.get("refinement", {}).get("levels_run")
    if levels:
        kind = ", diffeomorphic" if metrics["refinement"]["diffeomorphic"] else ""
        rows.append(("Refinement", f"{sum(level['iterations'] for level in levels)} iterations over {len(levels)} "
                                   f"levels ({metrics['refinement']['similarity']}{kind})"))
    if "timings_s" in metrics:
        rows.append(("Run time", f"{sum(metrics['timings_s'].values()):.1f} s"))
    return rows
