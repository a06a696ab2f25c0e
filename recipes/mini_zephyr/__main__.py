"""``python -m recipes.mini_zephyr [overrides]``: the Mini-Zephyr recipe (`recipes.mini_zephyr.run`)."""

from recipes.mini_zephyr.run import main

if __name__ == "__main__":
    main()
