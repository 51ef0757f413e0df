"""The stateless HTTP API: validates requests, writes orders to the store, reads what the host wrote."""
