-- The price catalogue (extproc/pricing/): the last good `/models` table of each priced provider,
-- so a replica that starts while the provider is unreachable still has prices. Prices are
-- bigint picodollars (10^-12 USD) per token, request, image or search; limits are tokens.

CREATE TABLE IF NOT EXISTS gateway_price_catalogue (
    provider text NOT NULL,
    model_id text NOT NULL,
    prompt bigint NOT NULL CHECK (prompt >= 0),
    completion bigint NOT NULL CHECK (completion >= 0),
    request bigint NOT NULL CHECK (request >= 0),
    image bigint NOT NULL CHECK (image >= 0),
    internal_reasoning bigint NOT NULL CHECK (internal_reasoning >= 0),
    input_cache_read bigint NOT NULL CHECK (input_cache_read >= 0),
    input_cache_write bigint NOT NULL CHECK (input_cache_write >= 0),
    web_search bigint NOT NULL CHECK (web_search >= 0),
    context_length bigint NOT NULL CHECK (context_length > 0),
    max_completion_tokens bigint CHECK (max_completion_tokens > 0),
    input_token_max bigint NOT NULL CHECK (input_token_max >= 0),
    output_token_max bigint NOT NULL CHECK (output_token_max >= 0),
    request_max bigint NOT NULL CHECK (request_max >= 0),
    image_max bigint NOT NULL CHECK (image_max >= 0),
    web_search_max bigint NOT NULL CHECK (web_search_max >= 0),
    PRIMARY KEY (provider, model_id)
);

-- One row per provider: when its table was last replaced, and the lease that lets one replica
-- of the fleet at a time fetch it (taken with a conditional UPDATE; it expires on its own if
-- the replica dies mid-fetch).
CREATE TABLE IF NOT EXISTS gateway_price_catalogue_refresh (
    provider text PRIMARY KEY,
    fetched_at timestamptz,
    models integer NOT NULL DEFAULT 0,
    lease_holder text,
    lease_until timestamptz,
    last_error text,
    last_error_at timestamptz
);
