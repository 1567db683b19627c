BEGIN TRANSACTION;
CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
);
INSERT INTO "_sqlite_migrations" VALUES(1,'tillpoint.ledger','m001_ledger','2026-11-30 10:25:11.678885+00:00');
INSERT INTO "_sqlite_migrations" VALUES(2,'tillpoint.ledger','m002_print_jobs_open','2026-11-30 10:25:11.685771+00:00');
INSERT INTO "_sqlite_migrations" VALUES(3,'tillpoint.ledger','m003_receipt_life','2026-11-30 10:25:11.688995+00:00');
INSERT INTO "_sqlite_migrations" VALUES(4,'tillpoint.ledger','m004_receipt_activates_at','2026-11-30 10:25:11.694015+00:00');
INSERT INTO "_sqlite_migrations" VALUES(5,'tillpoint.ledger','m005_points_expires_at','2026-11-30 10:25:11.697972+00:00');
INSERT INTO "_sqlite_migrations" VALUES(6,'tillpoint.ledger','m006_coupon_uses','2026-11-30 10:25:11.701976+00:00');
INSERT INTO "_sqlite_migrations" VALUES(7,'tillpoint.ledger','m007_issued_coupons','2026-11-30 10:25:11.705944+00:00');
INSERT INTO "_sqlite_migrations" VALUES(8,'tillpoint.sync','m001_sync_state','2026-11-30 10:25:11.808419+00:00');
CREATE TABLE coupon_uses (
            code TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            customer_id TEXT,
            offer_id TEXT NOT NULL,
            at TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
CREATE TABLE device (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "device" VALUES('last_seq:till-1','1');
CREATE TABLE issued_coupons (
            code TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
CREATE TABLE journal (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            ref_id TEXT NOT NULL,
            at TEXT NOT NULL,
            customer_id TEXT,
            card TEXT NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        );
INSERT INTO "journal" VALUES('till-1',1,'CHECKOUT','r1','2026-11-23T10:15:00+03:00','c-a','2770000000017','2026-11-23T07:20:00.000000Z');
CREATE TABLE outbox (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (device_id, seq)
        );
INSERT INTO "outbox" VALUES('till-1',1,'{"deviceId": "till-1", "seq": 1, "kind": "CHECKOUT", "at": "2026-11-23T10:15:00+03:00", "customerId": "c-a", "card": "2770000000017", "requestJson": "{\"receiptId\": \"r1\", \"storeId\": \"s1\", \"tillId\": \"t1\", \"at\": \"2026-11-23T10:15:00+03:00\", \"card\": \"2770000000017\", \"lines\": [{\"sku\": \"4601234000017\", \"qty\": \"2\", \"priceMinor\": 8990}], \"redeemPoints\": 0, \"explain\": false, \"coupons\": []}", "resultJson": "{\"receiptId\": \"r1\", \"card\": {\"status\": \"FOUND\", \"customerId\": \"c-a\", \"tier\": \"gold\", \"firstName\": \"Анна\"}, \"mode\": \"OFFLINE\", \"lines\": [{\"sku\": \"4601234000017\", \"amountMinor\": 17980, \"discountMinor\": 0, \"offerId\": null, \"redeemedMinor\": 0, \"earnedPoints\": 67}], \"totalMinor\": 17980, \"discountMinor\": 0, \"redeemedPoints\": 0, \"payableMinor\": 17980, \"earnedPoints\": 67, \"balance\": {\"availablePoints\": 1267, \"pendingPoints\": 0}, \"heldOut\": [], \"printedOffers\": [], \"coupons\": [], \"display\": [\"С днём рождения!\", \"Бонусы: 1267\"], \"state\": \"CONFIRMED\"}", "pointsDeltaAvailable": 67, "pointsDeltaPending": 0}','2026-11-23T07:20:00.000000Z',0);
CREATE TABLE points (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            customer_id TEXT NOT NULL,
            receipt_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('spend', 'earn')),
            points INTEGER NOT NULL,
            activates_at TEXT
        , expires_at TEXT);
INSERT INTO "points" VALUES(1,'till-1',1,'c-a','r1','earn',67,'2026-11-23T07:15:00.000000Z',NULL);
CREATE TABLE print_history (
            customer_id TEXT NOT NULL,
            offer_id TEXT NOT NULL,
            printed_at TEXT NOT NULL,
            receipt_id TEXT NOT NULL
        );
CREATE TABLE print_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            receipt_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'PENDING',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,
            last_error TEXT,
            printed_at TEXT
        );
CREATE TABLE receipt_life (
            receipt_id TEXT PRIMARY KEY,
            state TEXT NOT NULL CHECK (state IN ('HELD', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),
            digest TEXT NOT NULL,
            request TEXT NOT NULL,
            held_result TEXT NOT NULL,
            figures TEXT NOT NULL,
            card TEXT NOT NULL,
            local_day TEXT NOT NULL,
            mode TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            hub_hold INTEGER NOT NULL,
            held_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            closed_at TEXT,
            fiscal_document TEXT
        );
INSERT INTO "receipt_life" VALUES('r1','CONFIRMED','0dfb809dde640e696a807e27dd3cdcec96233512317c41b5f84da9f001bf9eda','','','{}','2770000000017','2026-11-23','OFFLINE',0,0,'2026-11-23T07:20:00.000000Z','2026-11-23T07:50:00.000000Z','2026-11-23T07:20:00.000000Z',NULL);
INSERT INTO "receipt_life" VALUES('r2','HELD','4dbe18a57812cc08dc049fbc683a1873ae0667952f548002689ab856da32fe64','{"receiptId": "r2", "storeId": "s1", "tillId": "t1", "at": "2026-11-23T10:15:00+03:00", "card": "2770000000017", "lines": [{"sku": "4601234000017", "qty": "2", "priceMinor": 8990}], "redeemPoints": 0, "explain": false, "coupons": []}','{"receiptId": "r2", "card": {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": "Анна"}, "mode": "OFFLINE", "lines": [{"sku": "4601234000017", "amountMinor": 17980, "discountMinor": 0, "offerId": null, "redeemedMinor": 0, "earnedPoints": 67}], "totalMinor": 17980, "discountMinor": 0, "redeemedPoints": 0, "payableMinor": 17980, "earnedPoints": 67, "balance": {"availablePoints": 1334, "pendingPoints": 0}, "heldOut": [], "printedOffers": [], "coupons": [], "display": ["Итого: 179,80", ""], "state": "HELD", "holdExpiresAt": "2026-11-23T07:50:00+00:00"}','{"at": "2026-11-23T10:15:00+03:00", "localDay": "2026-11-23", "card": "2770000000017", "customerId": "c-a", "firstName": "Анна", "mode": "OFFLINE", "redeemed": 0, "earned": 67, "extra": 0, "activatesAt": "2026-11-23T07:15:00.000000Z", "expiresAt": null, "pending": false, "lines": [["4601234000017", "2", 0, 67]], "offers": [], "cooldownDays": 7, "display": ["С днём рождения!", "Бонусы: 1334"]}','2770000000017','2026-11-23','OFFLINE',0,0,'2026-11-23T07:20:00.000000Z','2026-11-23T07:50:00.000000Z',NULL,NULL);
CREATE TABLE receipt_lines (
            receipt_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            sku TEXT NOT NULL,
            qty TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            earned_points INTEGER NOT NULL,
            returned_qty TEXT NOT NULL DEFAULT '0',
            PRIMARY KEY (receipt_id, idx)
        );
INSERT INTO "receipt_lines" VALUES('r1',0,'4601234000017','2',0,67,'0');
CREATE TABLE receipts (
            receipt_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            local_day TEXT NOT NULL,
            card TEXT NOT NULL,
            customer_id TEXT,
            mode TEXT NOT NULL,
            redeemed_points INTEGER NOT NULL,
            extra_points INTEGER NOT NULL,
            request TEXT NOT NULL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL
        , activates_at TEXT);
INSERT INTO "receipts" VALUES('r1','till-1',1,'2026-11-23T10:15:00+03:00','2026-11-23','2770000000017','c-a','OFFLINE',0,0,'{"receiptId": "r1", "storeId": "s1", "tillId": "t1", "at": "2026-11-23T10:15:00+03:00", "card": "2770000000017", "lines": [{"sku": "4601234000017", "qty": "2", "priceMinor": 8990}], "redeemPoints": 0, "explain": false, "coupons": []}','{"receiptId": "r1", "card": {"status": "FOUND", "customerId": "c-a", "tier": "gold", "firstName": "Анна"}, "mode": "OFFLINE", "lines": [{"sku": "4601234000017", "amountMinor": 17980, "discountMinor": 0, "offerId": null, "redeemedMinor": 0, "earnedPoints": 67}], "totalMinor": 17980, "discountMinor": 0, "redeemedPoints": 0, "payableMinor": 17980, "earnedPoints": 67, "balance": {"availablePoints": 1267, "pendingPoints": 0}, "heldOut": [], "printedOffers": [], "coupons": [], "display": ["С днём рождения!", "Бонусы: 1267"], "state": "CONFIRMED"}','2026-11-23T07:20:00.000000Z','2026-11-23T07:15:00.000000Z');
CREATE TABLE refunds (
            refund_id TEXT PRIMARY KEY,
            receipt_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at TEXT NOT NULL,
            request TEXT NOT NULL,
            result TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
CREATE TABLE sync_set_aside (
            device_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            payload TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)
        );
CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "sync_state" VALUES('last_pull_at','2026-11-23T07:00:00.000000Z');
CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name");
CREATE INDEX receipts_card_day ON receipts (card, local_day);
CREATE INDEX points_customer ON points (customer_id);
CREATE INDEX print_history_customer ON print_history (customer_id, offer_id);
CREATE INDEX print_jobs_open ON print_jobs(state, id) WHERE state <> 'DONE';
CREATE INDEX receipt_life_open ON receipt_life (state, expires_at) WHERE state = 'HELD';
CREATE INDEX receipt_life_card_day ON receipt_life (card, local_day)
            WHERE state = 'HELD';
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('points',1);
COMMIT;
