-- The clinic's tables.
CREATE TABLE patients (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    ssn TEXT,
    encrypted_ssn BLOB, ssn_iv BLOB, ssn_auth_tag BLOB, ssn_data_key BLOB, ssn_hash BLOB,
    encrypted_notes BLOB, notes_iv BLOB, notes_auth_tag BLOB, notes_data_key BLOB,
    encrypted_allergies BLOB, allergies_iv BLOB, allergies_auth_tag BLOB, allergies_data_key BLOB,
    encrypted_photo BLOB, photo_iv BLOB, photo_auth_tag BLOB, photo_data_key BLOB,
    keys_rotated_at TIMESTAMP
);
CREATE INDEX patients_ssn_hash ON patients (ssn_hash);
CREATE TABLE visits (
    visit_no INTEGER PRIMARY KEY,
    patient_id BIGINT NOT NULL REFERENCES patients (id),
    encrypted_summary BLOB NOT NULL, summary_iv BLOB NOT NULL, summary_auth_tag BLOB NOT NULL,
    summary_data_key BLOB NOT NULL
);
CREATE TABLE staff (
    id INTEGER PRIMARY KEY,
    badge TEXT NOT NULL UNIQUE,
    encrypted_phone BLOB NOT NULL, phone_iv BLOB NOT NULL, phone_auth_tag BLOB NOT NULL,
    phone_data_key BLOB NOT NULL
);
