DROP TABLE contacts;
DROP TABLE leads;
DROP TABLE source_operators;
DROP TABLE sources;
DROP TABLE operators;
