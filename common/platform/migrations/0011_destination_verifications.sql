-- #16. EMAIL and SMS destinations a user chose: a reply goes to one only once its owner confirmed the code
-- relaygate sent there (the operator's default destinations need none). Only a hash of the code is kept.
CREATE TABLE destination_verifications (
    tenant_id    TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    channel      TEXT NOT NULL CHECK (channel IN ('EMAIL', 'SMS')),
    destination  TEXT NOT NULL,
    code_hash    TEXT,                 -- of the code last sent; NULL until one was sent
    sent_at      TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ,
    tries        INT NOT NULL DEFAULT 0,  -- wrong codes given for the code last sent
    verified_at  TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id, channel, destination)
);
