#pragma once
// kvferry/server: the OpenAI-compatible HTTP API (PROTOCOL.md §2). So far: request
// parsing/validation and the Status → HTTP error mapping (api.h); the serving
// front end that drives the engine lands with the serving work.

#include "kvferry/server/api.h"
