"""ModelPress tasks: plain, typed functions. No Prefect needed to call them."""
