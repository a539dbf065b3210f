rule aggregate:
    input:
        metrics=PLAN.metrics_files(),
        logs=PLAN.training_logs(),
    output:
        long=report(
            f"{TABLES_DIR}/metrics_long.csv",
            caption="../report/metrics_long.rst",
            category="Tables",
        ),
        wide=report(
            f"{TABLES_DIR}/metrics_wide.csv",
            caption="../report/metrics_wide.rst",
            category="Tables",
        ),
        tables=report(
            expand(
                f"{TABLES_DIR}/{{name}}.{{ext}}",
                name=PLAN.paper_table_names(),
                ext=["tex", "md", "csv"],
            ),
            caption="../report/tables.rst",
            category="Tables",
        ),
        plots=report(
            directory(f"{TABLES_DIR}/plots"),
            patterns=["{name}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCH_DIR}/aggregate.tsv"
    localrule: PLAN.is_local("aggregate")
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("aggregate")
    params:
        tracked=tracked("aggregate"),
        icae=icae_command("aggregate"),
        args=args("aggregate"),
        out=lambda w, output: os.path.dirname(output.long),
    shell:
        "{params.icae} aggregate {params.args} --out {params.out:q}"
        " --inputs {input.metrics:q} --logs {input.logs:q} > {log} 2>&1"
