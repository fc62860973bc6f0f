"""What a person sees: figures (PNG), tables (Markdown + JSON) and the report page.

`figures`: drawing helpers. `tables`: Markdown tables and their JSON twins.
`page`: `<workdir>/report.html`. `visualize`: Figs. 2, 4, 6 and 7 of a run.
`run_report`: a run's whole report (training, then those figures).
`fig5`: Fig. 5 (invariance). `table1`: Table 1 and Fig. 8 (correspondence).
`multi`: one page for several workdirs; `provenance`: the software that wrote it.
"""
