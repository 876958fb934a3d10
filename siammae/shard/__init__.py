"""``siammae shard``: videos -> WebDataset shards of JPEG frame pairs (or clips).

Modules, one job each: :mod:`.sources` (find videos and labels), :mod:`.sampling` (which frames),
:mod:`.decode` (read them), :mod:`.samples` (encode one video's samples: the format), :mod:`.folder`
(the paths of OUT), :mod:`.writer` (tar shards, write-then-rename), :mod:`.pool` (worker processes,
crash recovery), :mod:`.run` (parts, resume, failed.jsonl, stats.json), :mod:`.inspect` (check and
summarise finished shards: ``siammae inspect``).
"""

from siammae.shard.run import ShardConfig, ShardError, merge_records, part_of, shard
from siammae.shard.samples import EncodeSpec
from siammae.shard.sampling import SampleSpec
from siammae.shard.sources import LAYOUTS, SourceError, find_videos

__all__ = [
    "EncodeSpec",
    "LAYOUTS",
    "SampleSpec",
    "ShardConfig",
    "ShardError",
    "SourceError",
    "find_videos",
    "merge_records",
    "part_of",
    "shard",
]
