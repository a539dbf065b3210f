rule prepare_model:
    output:
        directory(MODEL_DIR),
    log:
        f"{LOGS}/prepare_model.log",
    benchmark:
        f"{BENCH_DIR}/prepare_model.tsv"
    localrule: PLAN.is_local("prepare_model")
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("prepare_model")
    params:
        tracked=tracked("prepare_model"),
        icae=icae_command("prepare_model"),
        args=args("prepare_model"),
    shell:
        "{params.icae} prepare-model {params.args} > {log} 2>&1"


rule prepare_data:
    input:
        model=MODEL_DIR,
        sources=local_source_files,
    output:
        train=PLAN.prepared_file("{dataset}", "train"),
        eval=PLAN.prepared_file("{dataset}", "eval"),
        summary=f"{DATA_DIR}/{{dataset}}/summary.json",
    log:
        f"{LOGS}/prepare_data/{{dataset}}.log",
    benchmark:
        f"{BENCH_DIR}/prepare_data/{{dataset}}.tsv"
    localrule: PLAN.is_local("prepare_data")
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("prepare_data")
    params:
        tracked=tracked("prepare_data"),
        icae=icae_command("prepare_data"),
        args=args("prepare_data"),
    shell:
        "{params.icae} prepare-data {params.args} > {log} 2>&1"
