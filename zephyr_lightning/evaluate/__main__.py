"""``python -m zephyr_lightning.evaluate``: the evaluation command (`zephyr_lightning.cli.evaluate`)."""

from zephyr_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
