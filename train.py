"""The train command from a source checkout (installed, the same command is ``zephyr-train``).

    python train.py +experiment=dpo                  # dDPO on the embedded default
    python train.py +experiment=sft                  # dSFT on the embedded default
    python train.py +experiment=dpo model=zephyr_7b_sft data=ultrafeedback trainer=gpu strategy=fsdp
    python train.py +experiment=dpo hydra.run.dir=DIR resume=true   # continue DIR's newest checkpoint

The command itself is `zephyr_lightning.cli.train`.
"""

from zephyr_lightning.cli.train import main, train  # noqa: F401  (`train` runs one composed config)

if __name__ == "__main__":
    main()
