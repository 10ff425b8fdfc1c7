"""The metering integration for the LiteLLM proxy.

- `metering_litellm.auth.user_api_key_auth`: the custom-auth hook
  (`general_settings.custom_auth`), asking quota's `POST /v1/authorize` for every call;
- `metering_litellm.callback.metering_callback`: the success callback
  (`litellm_settings.callbacks`), reporting each call's usage to ingest's `POST /v1/usage`.

Nothing is imported here, so the pure parts (`report`, `cache`, `usage`), the stub backend and
the harness load without LiteLLM. See the README's "LiteLLM proxy" section.
"""
