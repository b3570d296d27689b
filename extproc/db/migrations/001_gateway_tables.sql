-- The tables of behaviour.md section 9 that the gateway reads or writes. Names and columns are
-- the existing deployment's, so its database works unchanged: every statement is IF NOT EXISTS
-- and leaves tables that are already there alone. Money columns are bigint microdollars.

CREATE TABLE IF NOT EXISTS kilocode_users (
    id text PRIMARY KEY,
    google_user_email text NOT NULL UNIQUE,
    google_user_name text NOT NULL DEFAULT '',
    google_user_image_url text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    hosted_domain text,
    microdollars_used bigint NOT NULL DEFAULT 0,
    kilo_pass_threshold bigint,
    stripe_customer_id text NOT NULL DEFAULT '',
    is_admin boolean NOT NULL DEFAULT false,
    total_microdollars_acquired bigint NOT NULL DEFAULT 0,
    next_credit_expiration_at timestamptz,
    has_validation_stytch boolean,
    has_validation_novel_card_with_hold boolean NOT NULL DEFAULT false,
    blocked_reason text,
    api_token_pepper text,
    auto_top_up_enabled boolean NOT NULL DEFAULT false,
    is_bot boolean NOT NULL DEFAULT false,
    default_model text,
    cohorts jsonb NOT NULL DEFAULT '{}'::jsonb,
    completed_welcome_form boolean NOT NULL DEFAULT false,
    linkedin_url text,
    github_url text,
    openrouter_upstream_safety_identifier text UNIQUE
);

CREATE TABLE IF NOT EXISTS organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    microdollars_used bigint NOT NULL DEFAULT 0,
    microdollars_balance bigint NOT NULL DEFAULT 0,
    total_microdollars_acquired bigint NOT NULL DEFAULT 0,
    next_credit_expiration_at timestamptz,
    stripe_customer_id text,
    auto_top_up_enabled boolean NOT NULL DEFAULT false,
    settings jsonb NOT NULL DEFAULT '{}'::jsonb,
    seat_count integer NOT NULL DEFAULT 0,
    require_seats boolean NOT NULL DEFAULT false,
    created_by_kilo_user_id text,
    deleted_at timestamptz,
    sso_domain text,
    plan text NOT NULL DEFAULT 'teams',
    free_trial_end_at timestamptz,
    company_domain text
);

CREATE TABLE IF NOT EXISTS organization_memberships (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kilo_user_id text NOT NULL REFERENCES kilocode_users(id) ON DELETE CASCADE,
    role text NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now(),
    invited_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, kilo_user_id)
);

CREATE TABLE IF NOT EXISTS organization_user_limits (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kilo_user_id text NOT NULL REFERENCES kilocode_users(id) ON DELETE CASCADE,
    limit_type text NOT NULL,
    microdollar_limit bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, kilo_user_id, limit_type)
);

CREATE TABLE IF NOT EXISTS organization_user_usage (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    kilo_user_id text NOT NULL REFERENCES kilocode_users(id) ON DELETE CASCADE,
    usage_date date NOT NULL,
    limit_type text NOT NULL,
    microdollar_usage bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, kilo_user_id, limit_type, usage_date)
);

CREATE TABLE IF NOT EXISTS byok_api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid REFERENCES organizations(id) ON DELETE CASCADE,
    kilo_user_id text REFERENCES kilocode_users(id) ON DELETE CASCADE,
    provider_id text NOT NULL,
    encrypted_api_key jsonb NOT NULL,
    is_enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    CHECK ((organization_id IS NULL) <> (kilo_user_id IS NULL)),
    UNIQUE (organization_id, provider_id),
    UNIQUE (kilo_user_id, provider_id)
);

CREATE TABLE IF NOT EXISTS models_by_provider (
    id serial PRIMARY KEY,
    data jsonb,
    openrouter jsonb,
    vercel jsonb
);

CREATE TABLE IF NOT EXISTS custom_llm (
    public_id text PRIMARY KEY,
    display_name text NOT NULL,
    context_length integer NOT NULL,
    max_completion_tokens integer NOT NULL,
    internal_id text NOT NULL,
    provider text NOT NULL,
    base_url text NOT NULL,
    api_key text NOT NULL,
    organization_ids jsonb NOT NULL DEFAULT '[]'::jsonb,
    included_tools jsonb,
    excluded_tools jsonb,
    supports_image_input boolean NOT NULL DEFAULT false,
    force_reasoning boolean NOT NULL DEFAULT false,
    opencode_settings jsonb,
    extra_body jsonb
);

CREATE TABLE IF NOT EXISTS temp_phase (
    key text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS credit_transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kilo_user_id text NOT NULL,
    amount_microdollars bigint NOT NULL,
    expiration_baseline_microdollars_used bigint,
    original_baseline_microdollars_used bigint,
    is_free boolean NOT NULL DEFAULT false,
    description text,
    original_transaction_id uuid,
    stripe_payment_id text,
    coinbase_credit_block_id text,
    credit_category text,
    expiry_date timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    organization_id uuid,
    check_category_uniqueness boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS credit_transactions_user_idx ON credit_transactions (kilo_user_id);

CREATE TABLE IF NOT EXISTS kilo_pass_issuance_items (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kilo_pass_issuance_id uuid,
    kind text,
    credit_transaction_id uuid UNIQUE REFERENCES credit_transactions(id),
    amount_usd numeric,
    bonus_percent_applied numeric,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS payment_methods (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id text NOT NULL,
    stripe_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);

CREATE TABLE IF NOT EXISTS auto_top_up_configs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owned_by_user_id text,
    owned_by_organization_id uuid,
    stripe_payment_method_id text,
    amount_cents integer NOT NULL DEFAULT 5000,
    last_auto_top_up_at timestamptz,
    attempt_started_at timestamptz,
    disabled_reason text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS free_model_usage (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ip_address text NOT NULL,
    model text NOT NULL,
    kilo_user_id text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS free_model_usage_ip_created_idx ON free_model_usage (ip_address, created_at);
CREATE INDEX IF NOT EXISTS free_model_usage_created_idx ON free_model_usage (created_at);

CREATE TABLE IF NOT EXISTS microdollar_usage (
    id uuid PRIMARY KEY,
    kilo_user_id text NOT NULL,
    cost bigint NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    cache_hit_tokens bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    provider text,
    model text,
    requested_model text,
    cache_discount bigint,
    has_error boolean NOT NULL DEFAULT false,
    abuse_classification smallint NOT NULL DEFAULT 0,
    organization_id uuid,
    inference_provider text,
    project_id text
);
CREATE INDEX IF NOT EXISTS microdollar_usage_user_created_idx ON microdollar_usage (kilo_user_id, created_at);
CREATE INDEX IF NOT EXISTS microdollar_usage_created_idx ON microdollar_usage (created_at);

CREATE TABLE IF NOT EXISTS http_user_agent (http_user_agent_id serial PRIMARY KEY, http_user_agent text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS http_ip (http_ip_id serial PRIMARY KEY, http_ip text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS vercel_ip_country (vercel_ip_country_id serial PRIMARY KEY, vercel_ip_country text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS vercel_ip_city (vercel_ip_city_id serial PRIMARY KEY, vercel_ip_city text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS system_prompt_prefix (system_prompt_prefix_id serial PRIMARY KEY, system_prompt_prefix text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS ja4_digest (ja4_digest_id serial PRIMARY KEY, ja4_digest text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS finish_reason (finish_reason_id serial PRIMARY KEY, finish_reason text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS editor_name (editor_name_id serial PRIMARY KEY, editor_name text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS feature (feature_id serial PRIMARY KEY, feature text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS mode (mode_id serial PRIMARY KEY, mode text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS auto_model (auto_model_id serial PRIMARY KEY, auto_model text NOT NULL UNIQUE);

CREATE TABLE IF NOT EXISTS microdollar_usage_metadata (
    id uuid PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    message_id text NOT NULL,
    http_user_agent_id integer REFERENCES http_user_agent(http_user_agent_id),
    http_ip_id integer REFERENCES http_ip(http_ip_id),
    vercel_ip_city_id integer REFERENCES vercel_ip_city(vercel_ip_city_id),
    vercel_ip_country_id integer REFERENCES vercel_ip_country(vercel_ip_country_id),
    vercel_ip_latitude real,
    vercel_ip_longitude real,
    ja4_digest_id integer REFERENCES ja4_digest(ja4_digest_id),
    user_prompt_prefix text,
    system_prompt_prefix_id integer REFERENCES system_prompt_prefix(system_prompt_prefix_id),
    system_prompt_length integer,
    max_tokens bigint,
    has_middle_out_transform boolean,
    status_code smallint,
    upstream_id text,
    finish_reason_id integer REFERENCES finish_reason(finish_reason_id),
    latency real,
    moderation_latency real,
    generation_time real,
    is_byok boolean,
    is_user_byok boolean NOT NULL DEFAULT false,
    streamed boolean,
    cancelled boolean,
    editor_name_id integer REFERENCES editor_name(editor_name_id),
    has_tools boolean,
    machine_id text,
    feature_id integer REFERENCES feature(feature_id),
    session_id text,
    mode_id integer REFERENCES mode(mode_id),
    auto_model_id integer REFERENCES auto_model(auto_model_id),
    market_cost bigint
);

CREATE TABLE IF NOT EXISTS api_request_log (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    kilo_user_id text,
    organization_id text,
    provider text,
    model text,
    status_code integer,
    request jsonb,
    response text
);

CREATE OR REPLACE VIEW microdollar_usage_view AS
SELECT
    mu.id, mu.kilo_user_id, mu.cost, mu.input_tokens, mu.output_tokens, mu.cache_write_tokens,
    mu.cache_hit_tokens, mu.created_at, mu.provider, mu.model, mu.requested_model,
    mu.cache_discount, mu.has_error, mu.abuse_classification, mu.organization_id,
    mu.inference_provider, mu.project_id,
    meta.message_id, ua.http_user_agent, ip.http_ip AS http_x_forwarded_for,
    city.vercel_ip_city AS http_x_vercel_ip_city, country.vercel_ip_country AS http_x_vercel_ip_country,
    meta.vercel_ip_latitude AS http_x_vercel_ip_latitude, meta.vercel_ip_longitude AS http_x_vercel_ip_longitude,
    ja4.ja4_digest AS http_x_vercel_ja4_digest, meta.user_prompt_prefix, spp.system_prompt_prefix,
    meta.system_prompt_length, meta.max_tokens, meta.has_middle_out_transform, meta.status_code,
    meta.upstream_id, fr.finish_reason, meta.latency, meta.moderation_latency, meta.generation_time,
    meta.is_byok, meta.is_user_byok, meta.streamed, meta.cancelled, en.editor_name, meta.has_tools,
    meta.machine_id, f.feature, meta.session_id, m.mode, am.auto_model, meta.market_cost
FROM microdollar_usage mu
LEFT JOIN microdollar_usage_metadata meta ON meta.id = mu.id
LEFT JOIN http_user_agent ua ON ua.http_user_agent_id = meta.http_user_agent_id
LEFT JOIN http_ip ip ON ip.http_ip_id = meta.http_ip_id
LEFT JOIN vercel_ip_city city ON city.vercel_ip_city_id = meta.vercel_ip_city_id
LEFT JOIN vercel_ip_country country ON country.vercel_ip_country_id = meta.vercel_ip_country_id
LEFT JOIN ja4_digest ja4 ON ja4.ja4_digest_id = meta.ja4_digest_id
LEFT JOIN system_prompt_prefix spp ON spp.system_prompt_prefix_id = meta.system_prompt_prefix_id
LEFT JOIN finish_reason fr ON fr.finish_reason_id = meta.finish_reason_id
LEFT JOIN editor_name en ON en.editor_name_id = meta.editor_name_id
LEFT JOIN feature f ON f.feature_id = meta.feature_id
LEFT JOIN mode m ON m.mode_id = meta.mode_id
LEFT JOIN auto_model am ON am.auto_model_id = meta.auto_model_id;
