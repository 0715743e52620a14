"""One registration for the page, run in a worker thread: the Slicer module's ``registerVolumes`` on a private
MRML scene, then the files offered for download.

Only SimpleITK images and plain values go in and come out (:class:`Inputs`, :class:`Outputs`), so the worker
never touches the page's scene while the server's event loop draws it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import SimpleITK as sitk

from . import scene as scenes
from .lib import import_lib

__all__ = ["Inputs", "Outputs", "register"]


@dataclass(frozen=True)
class Inputs:
    """The images of one run; label maps are optional (both for Dice) and named by ``label_names``."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: Optional[sitk.Image] = None
    moving_labels: Optional[sitk.Image] = None
    label_names: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outputs:
    """What a run produced: the warped moving image, the compact field (LPS mm, "from parent" = resampling),
    the warped labels named ``label_names`` (or ``None``), the module's metrics and the files written."""

    warped: sitk.Image
    field: sitk.Image
    warped_labels: Optional[sitk.Image]
    label_names: dict[int, str]
    metrics: dict
    files: dict[str, Path]


def register(inputs: Inputs, options: Mapping[str, Any], folder: Path,
             progress: Callable[[float, str], None], cancel: Callable[[], bool]) -> Outputs:
    """Register ``inputs`` with ``registerVolumes(**options)`` and write the downloads into ``folder``.

    Downloads (names from ``rcreg.options.OUTPUT_FILES``): the transform (the module's grid transform, written
    compact by ``rcreg.io.write_transform``), its inverse (``rcreg.fields.inverse_transform``), the warped
    volume, the warped labels when there are labels, and the metrics. Raises what ``registerVolumes`` raises
    (``RegistrationCancelled`` when ``cancel()`` turns true).
    """
    from ..fields import displacement_transform, inverse_transform
    from ..io import write_image, write_transform
    from ..options import OUTPUT_FILES

    lib = import_lib()
    scene = scenes.new_scene()
    fixed = scenes.volume_node(scene, inputs.fixed, "fixed")
    moving = scenes.volume_node(scene, inputs.moving, "moving")
    segmentations = {role: scenes.segmentation_node(scene, labels, volume, f"{role} segmentation", inputs.label_names)
                     for role, labels, volume in (("fixed", inputs.fixed_labels, fixed),
                                                  ("moving", inputs.moving_labels, moving)) if labels is not None}
    logic = lib.RecursiveCascadeRegistrationLogic()
    metrics = logic.registerVolumes(fixed, moving, movingSegmentationNode=segmentations.get("moving"),
                                    fixedSegmentationNode=segmentations.get("fixed"), progressCallback=progress,
                                    cancelCallback=cancel, **options)

    progress(1.0, "Saving the results")
    folder.mkdir(parents=True, exist_ok=True)
    files = {key: folder / OUTPUT_FILES[key] for key in ("transform", "inverse_transform", "warped", "metrics")}
    field = lib.nodes.displacementFromGridTransform(logic.outputTransformNode)
    write_transform(displacement_transform(field), files["transform"])
    write_transform(inverse_transform(field), files["inverse_transform"])
    warped = lib.nodes.volumeNodeToImage(logic.outputVolumeNode)
    write_image(warped, files["warped"])
    warped_labels, label_names = None, {}
    if logic.outputSegmentationNode is not None:
        segmentation = logic.outputSegmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        warped_labels = lib.nodes.segmentationToLabelImage(logic.outputSegmentationNode, ids, logic.outputVolumeNode)
        label_names = {n + 1: segmentation.GetSegment(sid).GetName() for n, sid in enumerate(ids)}
        files["warped_labels"] = write_image(warped_labels, folder / OUTPUT_FILES["warped_labels"])
    files["metrics"].write_text(json.dumps(metrics, indent=2, default=float) + "\n", encoding="utf-8")
    return Outputs(warped, field, warped_labels, label_names, metrics, files)
