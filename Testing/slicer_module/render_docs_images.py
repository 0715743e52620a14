"""Render the slice-view pictures of docs/slicer.md with Slicer's own slice logic and displayable managers.

Run: ``.venv/bin/python Testing/slicer_module/render_docs_images.py [output folder]`` (default docs/images).
The scene is the synthetic phantom pair registered through the module's logic with an analytic predictor.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "RecursiveCascadeRegistration"))
sys.path.insert(0, str(HERE))
sys.path = [entry for entry in sys.path if Path(entry or ".").resolve() / "slicer" != HERE]  # see conftest.py

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mrml_scene import newScene  # noqa: E402
from RecursiveCascadeRegistrationLib import RecursiveCascadeRegistrationLogic, display, testing  # noqa: E402
from slice_views import OffscreenSliceView, savePNG  # noqa: E402

VIEWS = {
    "slicer_fixed.png": "Fixed volume",
    "slicer_overlay.png": "Fixed / warped moving, fade 0.5",
    "slicer_segmentation.png": "Warped moving segmentation",
    "slicer_grid.png": "Deformation grid",
}


def render(outputDir: Path) -> list[Path]:
    torch.set_num_threads(2)
    scene = newScene()
    fixed, fixedSeg, moving, movingSeg = testing.addPhantomPair(scene)
    logic = RecursiveCascadeRegistrationLogic()
    metrics = logic.registerVolumes(fixed, moving, model=testing.SinusoidPredictor(amplitude=1.5),
                                    movingSegmentationNode=movingSeg, fixedSegmentationNode=fixedSeg)
    for segmentation in (fixedSeg, movingSeg, logic.outputSegmentationNode):
        segmentation.GetDisplayNode().SetVisibility(False)
    view = OffscreenSliceView(scene, scene.applicationLogic, size=(400, 400))
    transform, warped, warpedSeg = logic.outputTransformNode, logic.outputVolumeNode, logic.outputSegmentationNode

    def show(name):
        display.showDeformationGrid(transform, fixed, visible=name == "slicer_grid.png")
        display.showInSliceViews(fixed, warped, 0.5 if name == "slicer_overlay.png" else 0.0,
                                 warpedSeg if name == "slicer_segmentation.png" else None, (warpedSeg,))
        view.showSlice(0.0)
        return view.render()

    outputDir.mkdir(parents=True, exist_ok=True)
    pictures = {name: show(name) for name in VIEWS}
    written = [savePNG(pixels, outputDir / name) for name, pixels in pictures.items()]

    tile = 400
    montage = Image.new("RGB", (2 * tile, 2 * tile + 40), "white")
    draw = ImageDraw.Draw(montage)
    for n, (name, caption) in enumerate(VIEWS.items()):
        x, y = (n % 2) * tile, (n // 2) * tile
        montage.paste(Image.fromarray(np.ascontiguousarray(pictures[name][::-1])), (x, y))
        draw.text((x + 8, y + 8), caption, fill="yellow")
    dice = ", ".join(f"{k} {v:.3f}" for k, v in metrics["dice"].items())
    draw.text((8, 2 * tile + 12), f"Dice after registration: {dice}; folded voxels {100 * metrics['folding_fraction']:.2f} %",
              fill="black")
    montagePath = outputDir / "slicer_views.png"
    montage.save(montagePath)
    return [*written, montagePath]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[1] / "docs" / "images"
    for path in render(target):
        print(path)
