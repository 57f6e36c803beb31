"""The walk: from clicks to per-slice masks of a lesion with a frozen 2D box-prompted model.

One stage a file, sharing one :class:`~ProMISeLib.walk.context.WalkContext`:

- ``search``: the box search at a click (its candidates and their scores);
- ``choose``: the prompt mode's chooser, the one place where candidates are ranked;
- ``seed``: the lesion at the click, and the crop re-centred on it;
- ``planes``: how far the lesion reaches along the slice axis, in the coronal and sagittal planes;
- ``step`` / ``stop`` / ``propagate``: the slice-by-slice walk both ways and where it ends;
- ``correct``: a further click redoes only its neighbourhood;
- ``lesions`` / ``memory``: the clicks of a call turned into lesions, remembered between calls;
- ``masks``: per-slice masks and the mask operations all stages share;
- ``settings``: every tunable constant; ``hooks``: the one extension point (:class:`WalkPlugin`).
"""

from ProMISeLib.walk.hooks import WalkPlugin, Weighed
from ProMISeLib.walk.masks import SliceMasks, assemble
from ProMISeLib.walk.settings import WALK_DEFAULTS, WalkSettings

__all__ = ["WALK_DEFAULTS", "SliceMasks", "WalkPlugin", "WalkSettings", "Weighed", "assemble"]
