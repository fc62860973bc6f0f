"""What a person sees: figures (PNG), tables (Markdown + JSON) and the report page.

`figures`: drawing helpers. `tables`: Markdown tables and their JSON twins.
`page`: `<workdir>/report.html`. `visualize`: Section 4's figures of a run.
"""
