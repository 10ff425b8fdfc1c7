"""The metering integration for the LiteLLM proxy.

- `user_api_key_auth`: the custom-auth hook (`general_settings.custom_auth`), asking quota's
  `POST /v1/authorize` for every call;
- `metering_callback`: the success callback (`litellm_settings.callbacks`), reporting each
  call's usage to ingest's `POST /v1/usage`.

See the README's "LiteLLM proxy" section for the proxy config and the settings.
"""

from metering_litellm.auth import user_api_key_auth
from metering_litellm.callback import metering_callback

__all__ = ["metering_callback", "user_api_key_auth"]
