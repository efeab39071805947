-- The demo's live database: customers and their orders.
CREATE DATABASE shop;
\connect shop
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id int PRIMARY KEY, customer int REFERENCES customers, total numeric(10,2));
INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 20000) g;
INSERT INTO orders SELECT g, 1 + g % 20000, (g % 997) / 10.0 FROM generate_series(1, 60000) g;
