rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        predictions=f"{EVAL_DIR}/predictions.jsonl",
        metrics=f"{EVAL_DIR}/metrics.csv",
        summary=f"{EVAL_DIR}/summary.json",
    log:
        f"{LOGS}/{{branch}}/eval-{{variant}}-{{task}}.log",
    benchmark:
        f"{BENCH_DIR}/{{branch}}/eval-{{variant}}-{{task}}.tsv"
    conda:
        "../../envs/icae.yaml"
    threads: PLAN.threads("evaluate")
    resources:
        gpu=PLAN.gpus("evaluate"),
    params:
        tracked=tracked("evaluate"),
        icae=icae_command("evaluate"),
        args=args("evaluate"),
    shell:
        "{params.icae} evaluate {params.args} > {log} 2>&1"
