"""The former name of :mod:`rayproc.pipelines.labdct.report`, kept working.

``python -m rayproc.pipelines.labdct_report ...`` (documented before the layout of
``rayproc/pipelines/labdct/``) runs ``python -m rayproc.pipelines.labdct.report ...`` unchanged.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("rayproc.pipelines.labdct.report", run_name="__main__", alter_sys=True)
