"""``rcreg web``: a browser front end on Slicer's own slice views (trame-slicer), over the Slicer module's logic.

Modules: :mod:`.lib` (importing the module's GUI-free logic), :mod:`.scene` (MRML scenes and nodes from
images), :mod:`.inputs` (files to images), :mod:`.sample` (the sample pair), :mod:`.runner` (a registration
in a worker thread), :mod:`.app` (the trame page and its state), :mod:`.server` (binding and serving).
Nothing is imported here, so ``import rcreg.web`` needs neither trame nor torch (docs/web.md).
"""
