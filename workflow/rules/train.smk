rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        **checkpoint_files(PLAN.pretrain_dir("{branch}")),
    log:
        f"{LOGS}/{{branch}}/pretrain.log",
    benchmark:
        f"{BENCH_DIR}/{{branch}}/pretrain.tsv"
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("pretrain")
    resources:
        gpu=PLAN.gpus("pretrain"),
    params:
        tracked=tracked("pretrain"),
        icae=icae_command("pretrain"),
        args=args("pretrain"),
        cleanup=cleanup("pretrain"),
    shell:
        "{params.icae} pretrain {params.args} > {log} 2>&1 && {params.cleanup}"


rule finetune:
    input:
        unpack(finetune_inputs),
    output:
        **checkpoint_files(PLAN.finetune_dir("{branch}", "{dataset}", "{model_type}")),
    log:
        f"{LOGS}/{{branch}}/finetune-{{dataset}}-{{model_type}}.log",
    benchmark:
        f"{BENCH_DIR}/{{branch}}/finetune-{{dataset}}-{{model_type}}.tsv"
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("finetune")
    resources:
        gpu=PLAN.gpus("finetune"),
    params:
        tracked=tracked("finetune"),
        icae=icae_command("finetune"),
        args=args("finetune"),
        cleanup=cleanup("finetune"),
    shell:
        "{params.icae} finetune {params.args} > {log} 2>&1 && {params.cleanup}"
