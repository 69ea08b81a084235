# pathreplay: patch one SAE feature during generation and trace what changes downstream.
# Stages live in workflow/rules/, one file each; the science lives in src/pathreplay/.
import os


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/exp1.smk"
include: "workflow/rules/screen.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/replay.smk"
include: "workflow/rules/behaviour.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/pathways.smk"
include: "workflow/rules/words.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        default_targets(),
