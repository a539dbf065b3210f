rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        predictions=f"{RUN}/{{branch}}/eval/{{variant}}/{{task}}/predictions.jsonl",
        metrics=f"{RUN}/{{branch}}/eval/{{variant}}/{{task}}/metrics.csv",
        summary=f"{RUN}/{{branch}}/eval/{{variant}}/{{task}}/summary.json",
    log:
        f"{LOGS}/{{branch}}/eval-{{variant}}-{{task}}.log",
    benchmark:
        f"{BENCH_DIR}/{{branch}}/eval-{{variant}}-{{task}}.tsv"
    conda:
        "../../envs/icae.yaml"
    threads: threads("evaluate")
    resources:
        gpu=gpus("evaluate"),
    params:
        tracked=tracked("evaluate"),
        icae=icae_command("evaluate"),
        args=args("evaluate"),
    shell:
        "{params.icae} evaluate {params.args} > {log} 2>&1"
