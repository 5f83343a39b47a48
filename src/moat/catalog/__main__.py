"""``python -m moat.catalog`` (``make catalog``): catalog.json written from catalog.yaml."""

from pathlib import Path

from moat.catalog import CATALOG_JSON, CATALOG_YAML, compile_catalog

here = Path(__file__).parent
(here / CATALOG_JSON).write_text(compile_catalog((here / CATALOG_YAML).read_text(encoding="utf-8")), encoding="utf-8")
