"""Tool-call protocols, chosen by name in the config: `PROTOCOLS.get("hermes" | "groundlight")`.

    protocol = PROTOCOLS.get(config.protocol)
    messages = protocol.prompt_messages(question, image_wh)     # system prompt with the tools
    parser = CallParser.build(protocol, tok)                     # on-device call parser
    call = parser.parse_batch(window_ids, window_lengths)        # [B] tool, numbers, error, ...
    chunk = protocol.crop_result((w, h), call_index).token_chunks(tok)   # text around the image

`base` defines the contract, `hermes` and `groundlight` the two protocols, `device_parser` (with
`chars` and `json_machine`) the parser that runs inside the compiled rollout.
"""

from pixel_jax.tools.protocols import groundlight, hermes
from pixel_jax.tools.protocols.base import PROTOCOLS, HostCall, InjectedText, ToolId, ToolProtocol
from pixel_jax.tools.protocols.device_parser import CallParser, ParsedCall

__all__ = [
    "PROTOCOLS",
    "CallParser",
    "HostCall",
    "InjectedText",
    "ParsedCall",
    "ToolId",
    "ToolProtocol",
    "groundlight",
    "hermes",
]
