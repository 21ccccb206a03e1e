"""croissant.json of a release: Croissant 1.1 metadata (JSON-LD) that ``mlcroissant`` validates and reads.

Resources: one ``FileObject`` per shard (a tar, with its sha256 and size), ``index.parquet`` and
``manifest.json``; a ``FileSet`` of the image members inside the shards. Record sets:

* ``classes``: the class names (an enumeration, inline: index, name);
* ``samples``: one record per sample from index.parquet (key, split, owner, shard, label), the label
  referencing ``classes``;
* ``images``: one record per image member of the shards (key, the encrypted image); png and jpeg only,
  as mlcroissant reads no .npy member.

``samples`` and ``images`` share the sample key; they are two record sets rather than one joined set
because mlcroissant cannot join a set read from archive members with a table (``Join`` fails on it).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from lcrypt.format import INDEX_NAME, MANIFEST_NAME, Manifest

CONFORMS_TO = "http://mlcommons.org/croissant/1.1"
CONTEXT = {
    "@language": "en", "@vocab": "https://schema.org/", "citeAs": "cr:citeAs", "column": "cr:column",
    "conformsTo": "dct:conformsTo", "containedIn": "cr:containedIn", "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"}, "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/", "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"}, "extract": "cr:extract", "field": "cr:field",
    "fileObject": "cr:fileObject", "fileProperty": "cr:fileProperty", "fileSet": "cr:fileSet",
    "format": "cr:format", "includes": "cr:includes", "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath", "key": "cr:key", "md5": "cr:md5", "parentField": "cr:parentField",
    "path": "cr:path", "rai": "http://mlcommons.org/croissant/RAI/", "recordSet": "cr:recordSet",
    "references": "cr:references", "regex": "cr:regex", "repeated": "cr:repeated", "replace": "cr:replace",
    "samplingRate": "cr:samplingRate", "sc": "https://schema.org/", "separator": "cr:separator",
    "source": "cr:source", "subField": "cr:subField", "transform": "cr:transform",
}
MIME = {"png": "image/png", "jpg": "image/jpeg"}


def _field(record_set: str, name: str, data_type: str, source: dict[str, Any], **extra: Any
           ) -> dict[str, Any]:
    return {"@type": "cr:Field", "@id": f"{record_set}/{name}", "name": name, "dataType": data_type,
            "source": source, **extra}


def _column(name: str) -> dict[str, Any]:
    return {"fileObject": {"@id": INDEX_NAME}, "extract": {"column": name}}


def croissant(m: Manifest, digests: Mapping[str, str], facts: Mapping[str, Any]) -> dict[str, Any]:
    """The Croissant document; ``digests``: sha256 of the release's files, ``facts``: title, description,
    license (SPDX id), creator, homepage (or None), version and date_published."""
    ext = {"png": "png", "jpeg": "jpg", "npy": "npy"}[m.encoding]
    files = [{"@type": "cr:FileObject", "@id": s.path, "name": s.path, "contentUrl": s.path,
              "encodingFormat": "application/x-tar", "contentSize": f"{s.bytes} B", "sha256": s.sha256}
             for s in m.shards]
    files += [{"@type": "cr:FileObject", "@id": name, "name": name, "contentUrl": name,
               "encodingFormat": mime, "sha256": digests[name]}
              for name, mime in ((INDEX_NAME, "application/x-parquet"), (MANIFEST_NAME, "application/json"))]
    images = ext != "npy"  # mlcroissant reads no .npy member (it yields nothing): describe none
    record_sets = [
        {"@type": "cr:RecordSet", "@id": "classes", "name": "classes", "dataType": "sc:Enumeration",
         "description": "the class names; index = label", "key": {"@id": "classes/index"},
         "field": [{"@type": "cr:Field", "@id": "classes/index", "name": "index", "dataType": "sc:Integer"},
                   {"@type": "cr:Field", "@id": "classes/name", "name": "name", "dataType": "sc:Text"}],
         "data": [{"classes/index": i, "classes/name": n} for i, n in enumerate(m.class_names)]},
        {"@type": "cr:RecordSet", "@id": "samples", "name": "samples", "key": {"@id": "samples/key"},
         "description": "one record per sample (index.parquet); its image: the images record of that key",
         "field": [_field("samples", "key", "sc:Text", _column("key")),
                   _field("samples", "split", "sc:Text", _column("split")),
                   _field("samples", "owner", "sc:Text", _column("owner")),
                   _field("samples", "shard", "sc:Text", _column("shard")),
                   _field("samples", "label", "sc:Integer", _column("label"),
                          references={"field": {"@id": "classes/index"}})]},
    ]
    if images:
        files.append({"@type": "cr:FileSet", "@id": "image-members", "name": "image-members",
                      "description": f"the encrypted {ext} members of every shard",
                      "containedIn": [{"@id": s.path} for s in m.shards], "encodingFormat": MIME[ext],
                      "includes": f"*.{ext}"})
        member = {"fileSet": {"@id": "image-members"}}
        key_source = {**member, "extract": {"fileProperty": "filename"},
                      "transform": {"regex": f"^([0-9a-f]+)\\.{ext}$"}}
        record_sets.append(
            {"@type": "cr:RecordSet", "@id": "images", "name": "images", "key": {"@id": "images/key"},
             "description": f"the encrypted images, one per {ext} member of the shards",
             "field": [_field("images", "key", "sc:Text", key_source),
                       _field("images", "image", "sc:ImageObject",
                              {**member, "extract": {"fileProperty": "content"}})]})
    doc = {"@context": CONTEXT, "@type": "sc:Dataset", "conformsTo": CONFORMS_TO, "name": m.name,
           "description": facts["description"], "version": facts["version"],
           "license": f"https://spdx.org/licenses/{facts['license']}.html",
           "creator": {"@type": "sc:Organization", "name": facts["creator"]},
           "datePublished": facts["date_published"],
           "citeAs": f"{facts['title']}, version {facts['version']}",
           "keywords": ["lcrypt", "encrypted", f"lcrypt-scheme-{m.scheme}", "image classification"],
           "isLiveDataset": False, "distribution": files, "recordSet": record_sets}
    if facts.get("homepage"):
        doc["url"] = facts["homepage"]
    return doc


def croissant_bytes(m: Manifest, digests: Mapping[str, str], facts: Mapping[str, Any]) -> bytes:
    return (json.dumps(croissant(m, digests, facts), indent=1, ensure_ascii=False) + "\n").encode("utf-8")
