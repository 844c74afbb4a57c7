-- The clinic's tables. PostgreSQL's `patients` also has columns of types the models do
-- not know (`timestamptz`, `uuid`, `jsonb`): the operations binary reads none of them.
CREATE TABLE patients (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    ssn TEXT,
    encrypted_ssn BYTEA, ssn_iv BYTEA, ssn_auth_tag BYTEA, ssn_data_key BYTEA, ssn_hash BYTEA,
    encrypted_notes BYTEA, notes_iv BYTEA, notes_auth_tag BYTEA, notes_data_key BYTEA,
    encrypted_allergies BYTEA, allergies_iv BYTEA, allergies_auth_tag BYTEA,
    allergies_data_key BYTEA,
    encrypted_photo BYTEA, photo_iv BYTEA, photo_auth_tag BYTEA, photo_data_key BYTEA,
    keys_rotated_at TIMESTAMPTZ,
    admitted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    external_id UUID NOT NULL DEFAULT gen_random_uuid(),
    preferences JSONB
);
CREATE INDEX patients_ssn_hash ON patients (ssn_hash);
CREATE TABLE visits (
    visit_no BIGSERIAL PRIMARY KEY,
    patient_id BIGINT NOT NULL REFERENCES patients (id),
    encrypted_summary BYTEA NOT NULL, summary_iv BYTEA NOT NULL, summary_auth_tag BYTEA NOT NULL,
    summary_data_key BYTEA NOT NULL
);
CREATE TABLE staff (
    id BIGSERIAL PRIMARY KEY,
    badge TEXT NOT NULL UNIQUE,
    encrypted_phone BYTEA NOT NULL, phone_iv BYTEA NOT NULL, phone_auth_tag BYTEA NOT NULL,
    phone_data_key BYTEA NOT NULL
);
