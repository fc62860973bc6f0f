"""The report page (zf_jax.report.page): what a reader sees around the figures."""

from __future__ import annotations

import re

import pytest

from zf_jax.report import page


def _png(workdir, name):
  path = page.figure_path(workdir, name)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
  return path


def test_figures_get_captions_that_link_their_file_and_items_are_a_table(tmp_path):
  a, b = _png(tmp_path, "a.png"), _png(tmp_path, "b.png")
  html = open(page.add_section(
      tmp_path, "fig2", "Fig. 2: top activations", figures=[a, b],
      captions=["Layer 1: eight maps", "Layer 2: eight maps"],
      items={"accuracy (centre crop, 10000 images)": "91.00%"}), encoding="utf-8").read()
  for caption, name in (("Layer 1: eight maps", "a.png"), ("Layer 2: eight maps", "b.png")):
    assert re.search(rf"<figcaption>{caption}<a href='figures/{name}'>{name}</a></figcaption>",
                     html), html
  # A long key wraps inside its own table cell instead of floating into the text below.
  assert ("<table class='items'><tr><td>accuracy (centre crop, 10000 images)</td>"
          "<td>91.00%</td></tr></table>") in html
  assert "<dl>" not in html


def test_default_captions_are_the_title_numbered_and_a_wrong_count_is_refused(tmp_path):
  a, b = _png(tmp_path, "a.png"), _png(tmp_path, "b.png")
  page.add_section(tmp_path, "fig7", "Fig. 7: occlusion", figures=[a, b])
  assert page.sections(tmp_path)[0]["captions"] == ["Fig. 7: occlusion (1 of 2)",
                                                    "Fig. 7: occlusion (2 of 2)"]
  with pytest.raises(ValueError, match="1 captions for 2 figures"):
    page.add_section(tmp_path, "fig7", "Fig. 7: occlusion", figures=[a, b], captions=["x"])


def test_tables_keep_their_markdown_alignment_names_left_numbers_right(tmp_path):
  from zf_jax.report import tables  # pylint: disable=import-outside-toplevel
  lines = tables.markdown_table(["row", "variant", "error %"], [["Base | 1", "zfnet", "38.4"]],
                                align="llr")
  tables.write_table(tmp_path, "t", "# Title\n\n" + "\n".join(lines), {})
  html = open(page.add_section(tmp_path, "table9", "T", tables=["t"]), encoding="utf-8").read()
  assert ("<tr><td class='l'>Base | 1</td><td class='l'>zfnet</td><td>38.4</td></tr>"
          in html), html
  assert "<h4>Title</h4>" in html
