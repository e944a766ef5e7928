"""Demo data for `cloudretail up --demo`, loaded through the gateway like any client would:
a catalog of 24 products in 4 categories, with stock, and a demo customer. Loading twice
changes nothing (products are found by SKU, the customer by email)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

DEMO_CUSTOMER: dict[str, str | bool] = {
    "email": "demo@cloudretail.example",
    "password": "demo-shopper-2026",
    "first_name": "Demo",
    "last_name": "Shopper",
    "gdpr_consent": True,
}

CATALOG: dict[str, list[tuple[str, str, str]]] = {
    "electronics": [
        ("Noise-cancelling headphones", "199.00", "EL-HEAD-01"),
        ("Mechanical keyboard", "89.50", "EL-KEYB-01"),
        ("27-inch monitor", "249.99", "EL-MONI-01"),
        ("USB-C charger 65W", "39.90", "EL-CHRG-01"),
        ("Wireless mouse", "24.99", "EL-MOUS-01"),
        ("Portable SSD 1TB", "109.00", "EL-SSD-01"),
    ],
    "home": [
        ("Cast-iron skillet", "34.95", "HO-SKIL-01"),
        ("French press", "27.00", "HO-PRES-01"),
        ("Linen duvet cover", "79.00", "HO-DUVE-01"),
        ("Desk lamp", "45.50", "HO-LAMP-01"),
        ("Chef's knife", "59.00", "HO-KNIF-01"),
        ("Ceramic mug set", "22.00", "HO-MUGS-01"),
    ],
    "books": [
        ("Designing Data-Intensive Applications", "42.00", "BK-DDIA-01"),
        ("The Pragmatic Programmer", "38.50", "BK-PRAG-01"),
        ("Release It!", "35.00", "BK-RELE-01"),
        ("Site Reliability Engineering", "44.00", "BK-SRE-01"),
        ("Refactoring", "41.00", "BK-REFA-01"),
        ("Building Microservices", "46.00", "BK-MICR-01"),
    ],
    "outdoor": [
        ("Trail running shoes", "129.00", "OU-SHOE-01"),
        ("Two-person tent", "189.00", "OU-TENT-01"),
        ("Insulated bottle", "29.95", "OU-BOTT-01"),
        ("Headlamp", "34.00", "OU-HEAD-01"),
        ("Daypack 24L", "74.00", "OU-PACK-01"),
        ("Camping stove", "64.50", "OU-STOV-01"),
    ],
}


@dataclass(frozen=True)
class DemoData:
    products: int
    created: int
    customer_email: str
    customer_password: str


async def _admin_token(client: httpx.AsyncClient, email: str, password: str) -> str:
    response = await client.post("/api/users/login", json={"email": email, "password": password})
    if response.status_code != 200:
        raise RuntimeError(f"admin login failed ({response.status_code}): {response.text}")
    token: str = response.json()["access_token"]
    return token


async def load_demo(gateway: str, admin_email: str, admin_password: str) -> DemoData:
    async with httpx.AsyncClient(base_url=gateway, timeout=15.0) as client:
        token = await _admin_token(client, admin_email, admin_password)
        admin = {"Authorization": f"Bearer {token}"}
        existing: dict[str, Any] = {}
        listed = await client.get("/api/products", params={"limit": 100})
        listed.raise_for_status()
        for item in listed.json()["items"]:
            existing[item["sku"]] = item
        created = 0
        for stock, (category, products) in enumerate(sorted(CATALOG.items())):
            for index, (name, price, sku) in enumerate(products):
                product = existing.get(sku)
                if product is None:
                    body = {
                        "name": name,
                        "price": price,
                        "sku": sku,
                        "category": category,
                        "description": f"{name}, from the CloudRetail demo catalog.",
                    }
                    response = await client.post("/api/products", json=body, headers=admin)
                    response.raise_for_status()
                    product = response.json()
                    created += 1
                    level = {
                        "quantity": 10 + 7 * index + 3 * stock,
                        "warehouse_location": f"{category[:2].upper()}-{index + 1:02d}",
                        "reorder_level": 5,
                    }
                    stocked = await client.put(
                        f"/api/inventory/{product['id']}", json=level, headers=admin
                    )
                    stocked.raise_for_status()
        registered = await client.post("/api/users/register", json=DEMO_CUSTOMER)
        if registered.status_code not in (201, 409):
            registered.raise_for_status()
    total = sum(len(products) for products in CATALOG.values())
    return DemoData(total, created, str(DEMO_CUSTOMER["email"]), str(DEMO_CUSTOMER["password"]))
