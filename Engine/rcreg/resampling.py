"""Resampling images and label maps onto another grid through a transform (no torch: ``rcreg apply`` uses it)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["INTEGER_PIXEL_TYPES", "resample"]

#: Scalar integer pixel types: images of these types are resampled back into their own type.
INTEGER_PIXEL_TYPES = frozenset((sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32,
                                 sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64))
#: Integer types whose values float32 cannot hold exactly (and ``sitk.Round``, which rounds through 32-bit
#: integers, cannot round above 2³⁰): interpolated in float64 and rounded by numpy.
_WIDE_INTEGER_TYPES = frozenset((sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkUInt64, sitk.sitkInt64))


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, labels: bool = False,
             interpolator: int = sitk.sitkLinear, keep_type: bool = True) -> sitk.Image:
    """Pull ``image`` onto ``reference``'s grid through ``transform`` (pull-back, as ITK does), 0 outside.

    Images: interpolated (``interpolator``, default linear; ITK computes in double from the input's own
    values) into float32 (float64 for 32- and 64-bit integers kept in their type),
    then — for an integer image, with ``keep_type`` — rounded and clamped back into its own pixel type, as
    ITK's, SimpleITK's and Slicer's resampling keep the input's type (half the bytes of float32 for an int16
    CT); otherwise float32 (``keep_type=False``: for images only measured or drawn, which need no rounding).
    Label maps: nearest neighbour, same type.
    """
    if labels:
        return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, 0, image.GetPixelID())
    pixel = image.GetPixelID() if keep_type else sitk.sitkFloat32
    if pixel in _WIDE_INTEGER_TYPES:
        out = sitk.Resample(image, reference, transform, interpolator, 0.0, sitk.sitkFloat64)
        rounded = sitk.GetImageFromArray(np.rint(sitk.GetArrayViewFromImage(out)))
        rounded.CopyInformation(out)
        return sitk.Clamp(rounded, pixel)
    out = sitk.Resample(image, reference, transform, interpolator, 0.0, sitk.sitkFloat32)
    return sitk.Clamp(sitk.Round(out), pixel) if pixel in INTEGER_PIXEL_TYPES else out
