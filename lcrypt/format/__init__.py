"""The lcrypt shard format: names, member codecs, the shard writer and reader, the manifest and the index.

A published dataset is a folder of WebDataset tar shards plus manifest.json and index.parquet
(:mod:`lcrypt.format.folder`). Writers (the pipeline) and readers (loaders, `lcrypt verify`) import the
format from here only, so it has one definition.
"""

from lcrypt.format.batch import decode_samples
from lcrypt.format.codecs import (ShardFormatError, decode_label, decode_labels, decode_member, encode_image,
                                  encode_png)
from lcrypt.format.folder import (CARD_NAME, CROISSANT_NAME, ERRORS_NAME, FRAGMENTS_NAME, INDEX_NAME,
                                  LOCK_NAME, MANIFEST_NAME, PREVIEW_NAME, PUBLIC_KEYS_NAME, REJECTIONS_NAME,
                                  RELEASE_FILES, RELEASE_INFO_NAME, SIGNATURES_DIR, SUMS_NAME, TIMM_INFO_NAME,
                                  ManifestError)
from lcrypt.format.index import INDEX_COLUMNS, read_index
from lcrypt.format.manifest import Manifest, OwnerEntry, ShardEntry, dataset_folder
from lcrypt.format.names import (IMAGE_EXT, IMAGE_EXTS, KEY_HEX_DIGITS, SHARD_RE, check_owner, check_split,
                                 num_shards_for, parse_shard_path, sample_key, sample_key_salt, shard_of,
                                 shard_path)
from lcrypt.format.reader import (Sample, count_problem, decode_shard, group_members, make_sample,
                                  read_samples, shard_members)
from lcrypt.format.writer import TAR_RECORD, ShardWriter, tar_bytes, write_tar

__all__ = [
    "CARD_NAME", "CROISSANT_NAME", "PREVIEW_NAME", "PUBLIC_KEYS_NAME", "REJECTIONS_NAME", "RELEASE_FILES",
    "RELEASE_INFO_NAME", "SIGNATURES_DIR", "SUMS_NAME",
    "ERRORS_NAME", "FRAGMENTS_NAME", "IMAGE_EXT", "IMAGE_EXTS", "INDEX_COLUMNS", "INDEX_NAME",
    "KEY_HEX_DIGITS", "LOCK_NAME", "MANIFEST_NAME", "SHARD_RE", "TAR_RECORD", "TIMM_INFO_NAME",
    "Manifest", "ManifestError", "OwnerEntry", "Sample", "ShardEntry", "ShardFormatError", "ShardWriter",
    "check_owner", "check_split", "count_problem", "dataset_folder", "decode_label",
    "decode_labels", "decode_member", "decode_samples", "decode_shard", "encode_image", "encode_png",
    "group_members", "make_sample", "num_shards_for", "parse_shard_path", "read_index", "read_samples",
    "sample_key", "sample_key_salt", "shard_members", "shard_of", "shard_path", "tar_bytes", "write_tar",
]
