"""The built-in text-to-SQL benchmark of ``sqlgym``: generated, deterministic, BIRD-shaped.

Four SQLite databases (``school``, ``shop``, ``library``, ``flights``) are generated from
fixed seeds (``random.Random(<seed>)``; Python's seeded generator is stable across versions
for ``random``, ``uniform``, ``randint``, ``choice``, ``sample`` and ``shuffle``) and written
as SQL dumps (:func:`database_dump`). Questions come from templates: each template has a
difficulty, a question, BIRD-style evidence and a gold SQL query with ``:name``
placeholders, and a list of candidate parameter sets drawn from the data. A seeded RNG
picks up to ``limit`` candidates per template; a candidate is kept only when its gold query
returns a non-empty result that is not just ``NULL``\\ s or a zero count, when its question
text is new, and -- for ``ORDER BY ... LIMIT k`` questions -- when the ``k``-th and
``k+1``-th sort keys differ (no tie decides the answer).

:func:`generate_questions` returns the questions in a fixed order (database by database,
template by template); the index in that list is the task id. Generation runs the gold
queries on in-memory copies of the databases (plain SQL, no version-dependent functions).
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "DB_IDS",
    "GENERATOR_VERSION",
    "GeneratedQuestion",
    "database_dump",
    "generate_questions",
]

#: Bump when the generated databases or questions change.
GENERATOR_VERSION = "1"

Row = tuple[object, ...]
Params = dict[str, object]


@dataclass(frozen=True)
class GeneratedQuestion:
    db_id: str
    question: str
    evidence: str
    sql: str
    difficulty: str


@dataclass(frozen=True)
class _Template:
    difficulty: str
    question: str
    evidence: str
    sql: str
    params: Callable[[_Data], list[Params]]
    limit: int = 6
    #: For ``ORDER BY ... LIMIT :k``: a query listing every sort key in order (tie check).
    order_keys: str | None = None


@dataclass(frozen=True)
class _Data:
    tables: dict[str, list[Row]]

    def column(self, table: str, index: int) -> list[object]:
        """Distinct values of a column, sorted (a deterministic candidate list)."""
        return sorted({r[index] for r in self.tables[table] if r[index] is not None}, key=str)


# --------------------------------------------------------------------------- vocabularies

_FIRST = [
    "Alice",
    "Bruno",
    "Chloe",
    "David",
    "Emma",
    "Felix",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Karin",
    "Liam",
    "Maya",
    "Noah",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Samir",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Anton",
    "Beatriz",
    "Carlos",
    "Dana",
]
_LAST = [
    "Adams",
    "Berger",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Usman",
    "Varga",
    "Weber",
    "Young",
    "Zhang",
]
_CITIES = ["Austin", "Boston", "Chicago", "Denver", "Lyon", "Madrid", "Osaka", "Porto"]


def _name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(_FIRST), rng.choice(_LAST)


def _date(rng: random.Random, start_year: int, end_year: int) -> str:
    return f"{rng.randint(start_year, end_year)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


# --------------------------------------------------------------------------- school

_SCHOOL_DDL = [
    """CREATE TABLE departments (
    dept_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    building TEXT NOT NULL
)""",
    """CREATE TABLE students (
    student_id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    gender TEXT NOT NULL, -- 'F' or 'M'
    birth_date TEXT NOT NULL, -- YYYY-MM-DD
    city TEXT NOT NULL,
    dept_id INTEGER NOT NULL REFERENCES departments(dept_id),
    enrollment_year INTEGER NOT NULL,
    gpa REAL NOT NULL
)""",
    """CREATE TABLE courses (
    course_id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    dept_id INTEGER NOT NULL REFERENCES departments(dept_id),
    credits INTEGER NOT NULL
)""",
    """CREATE TABLE enrollments (
    student_id INTEGER NOT NULL REFERENCES students(student_id),
    course_id INTEGER NOT NULL REFERENCES courses(course_id),
    semester TEXT NOT NULL, -- e.g. '2024-Fall'
    grade INTEGER NOT NULL, -- 0 to 100
    PRIMARY KEY (student_id, course_id)
)""",
]

_DEPARTMENTS = {
    "Computer Science": ["Algorithms", "Databases", "Operating Systems", "Compilers", "Networks"],
    "Mathematics": ["Linear Algebra", "Calculus", "Topology", "Statistics", "Number Theory"],
    "Physics": ["Mechanics", "Optics", "Thermodynamics", "Quantum Physics", "Relativity"],
    "Biology": ["Genetics", "Ecology", "Microbiology", "Botany", "Zoology"],
    "History": ["Ancient Rome", "Medieval Europe", "Modern Asia", "World Wars", "Archaeology"],
    "Economics": ["Microeconomics", "Macroeconomics", "Econometrics", "Finance", "Game Theory"],
}
_SEMESTERS = ["2023-Fall", "2024-Spring", "2024-Fall"]


def _school_rows(rng: random.Random) -> dict[str, list[Row]]:
    departments: list[Row] = []
    courses: list[Row] = []
    for d, (dept, topics) in enumerate(_DEPARTMENTS.items(), start=1):
        departments.append((d, dept, f"Hall {chr(64 + d)}"))
        for topic in topics:
            courses.append((len(courses) + 1, topic, d, rng.randint(2, 5)))
    students: list[Row] = []
    for s in range(1, 151):
        first, last = _name(rng)
        students.append(
            (
                s,
                first,
                last,
                rng.choice("FM"),
                _date(rng, 1998, 2007),
                rng.choice(_CITIES),
                rng.randint(1, len(departments)),
                rng.randint(2019, 2024),
                round(rng.uniform(1.5, 4.0), 2),
            )
        )
    enrollments: list[Row] = []
    for s in range(1, 151):
        for c in sorted(rng.sample(range(1, len(courses) + 1), rng.randint(3, 7))):
            enrollments.append((s, c, rng.choice(_SEMESTERS), rng.randint(35, 100)))
    return {
        "departments": departments,
        "students": students,
        "courses": courses,
        "enrollments": enrollments,
    }


def _school_templates() -> list[_Template]:
    def cities(d: _Data) -> list[Params]:
        return [{"city": c} for c in d.column("students", 5)]

    def depts(d: _Data) -> list[Params]:
        return [{"dept": n} for n in d.column("departments", 1)]

    def titles(d: _Data) -> list[Params]:
        return [{"title": t} for t in d.column("courses", 1)]

    def students(d: _Data) -> list[Params]:
        return [{"first": r[1], "last": r[2]} for r in d.tables["students"]]

    return [
        _Template(
            "simple",
            "How many students live in {city}?",
            "",
            "SELECT COUNT(*) FROM students WHERE city = :city",
            cities,
            limit=5,
        ),
        _Template(
            "simple",
            "List the full names of the students from {city} who enrolled in {year}.",
            "full name refers to first_name, last_name; enrolled in {year} refers to "
            "enrollment_year = {year}",
            "SELECT first_name, last_name FROM students WHERE city = :city "
            "AND enrollment_year = :year",
            lambda d: [
                {"city": c, "year": y} for c in d.column("students", 5) for y in range(2019, 2025)
            ],
        ),
        _Template(
            "simple",
            "What is the average GPA of the {gender_word} students?",
            "{gender_word} refers to gender = '{gender}'",
            "SELECT AVG(gpa) FROM students WHERE gender = :gender",
            lambda d: [
                {"gender": "F", "gender_word": "female"},
                {"gender": "M", "gender_word": "male"},
            ],
        ),
        _Template(
            "simple",
            "How many courses are worth at least {credits} credits?",
            "",
            "SELECT COUNT(*) FROM courses WHERE credits >= :credits",
            lambda d: [{"credits": c} for c in (3, 4, 5)],
        ),
        _Template(
            "simple",
            "Give the ids of the students whose GPA is above {gpa}.",
            "",
            "SELECT student_id FROM students WHERE gpa > :gpa",
            lambda d: [{"gpa": g} for g in (3.8, 3.85, 3.9, 3.95)],
            limit=3,
        ),
        _Template(
            "simple",
            "How many adult students live in {city}?",
            "adult refers to being at least 18 years old on 2024-09-01, i.e. "
            "birth_date <= '2006-09-01'",
            "SELECT COUNT(*) FROM students WHERE city = :city AND birth_date <= '2006-09-01'",
            cities,
            limit=4,
        ),
        _Template(
            "moderate",
            "How many students belong to the {dept} department?",
            "",
            "SELECT COUNT(*) FROM students AS T1 INNER JOIN departments AS T2 "
            "ON T1.dept_id = T2.dept_id WHERE T2.name = :dept",
            depts,
            limit=4,
        ),
        _Template(
            "moderate",
            "List the titles of the courses taken by {first} {last}.",
            "",
            "SELECT T3.title FROM students AS T1 INNER JOIN enrollments AS T2 "
            "ON T1.student_id = T2.student_id INNER JOIN courses AS T3 "
            "ON T2.course_id = T3.course_id WHERE T1.first_name = :first AND T1.last_name = :last",
            students,
        ),
        _Template(
            "moderate",
            "What is the average grade of the students in the course {title}?",
            "",
            "SELECT AVG(T2.grade) FROM courses AS T1 INNER JOIN enrollments AS T2 "
            "ON T1.course_id = T2.course_id WHERE T1.title = :title",
            titles,
            limit=5,
        ),
        _Template(
            "moderate",
            "Which {k} students have the highest GPA? List their first and last names.",
            "",
            "SELECT first_name, last_name FROM students ORDER BY gpa DESC LIMIT :k",
            lambda d: [{"k": k} for k in (3, 5, 10)],
            order_keys="SELECT gpa FROM students ORDER BY gpa DESC",
        ),
        _Template(
            "moderate",
            "For each department, how many courses worth {credits} credits does it offer? "
            "Give the department name and the number of courses.",
            "",
            "SELECT T1.name, COUNT(T2.course_id) FROM departments AS T1 INNER JOIN courses AS T2 "
            "ON T1.dept_id = T2.dept_id WHERE T2.credits = :credits GROUP BY T1.name",
            lambda d: [{"credits": c} for c in (2, 3, 4, 5)],
        ),
        _Template(
            "moderate",
            "In which city do most students of the {dept} department live?",
            "",
            "SELECT T1.city FROM students AS T1 INNER JOIN departments AS T2 "
            "ON T1.dept_id = T2.dept_id WHERE T2.name = :dept GROUP BY T1.city "
            "ORDER BY COUNT(*) DESC LIMIT :k",
            lambda d: [{"dept": p["dept"], "k": 1} for p in depts(d)],
            order_keys="SELECT COUNT(*) FROM students AS T1 INNER JOIN departments AS T2 "
            "ON T1.dept_id = T2.dept_id WHERE T2.name = :dept GROUP BY T1.city "
            "ORDER BY COUNT(*) DESC",
        ),
        _Template(
            "moderate",
            "Give the ids of the students who scored at least {grade} in {title} in the "
            "{semester} semester.",
            "",
            "SELECT T2.student_id FROM courses AS T1 INNER JOIN enrollments AS T2 "
            "ON T1.course_id = T2.course_id WHERE T1.title = :title AND T2.semester = :semester "
            "AND T2.grade >= :grade",
            lambda d: [
                {"title": t["title"], "semester": s, "grade": g}
                for t in titles(d)
                for s in _SEMESTERS
                for g in (80, 90)
            ],
        ),
        _Template(
            "challenging",
            "Which students have a GPA higher than the average GPA of the {dept} department? "
            "List their ids.",
            "",
            "SELECT student_id FROM students WHERE gpa > (SELECT AVG(T1.gpa) FROM students AS T1 "
            "INNER JOIN departments AS T2 ON T1.dept_id = T2.dept_id WHERE T2.name = :dept)",
            depts,
            limit=3,
        ),
        _Template(
            "challenging",
            "Name the departments whose students have an average GPA above {gpa}.",
            "",
            "SELECT T2.name FROM students AS T1 INNER JOIN departments AS T2 "
            "ON T1.dept_id = T2.dept_id GROUP BY T2.name HAVING AVG(T1.gpa) > :gpa",
            lambda d: [{"gpa": g} for g in (2.7, 2.75, 2.8, 2.85)],
        ),
        _Template(
            "challenging",
            "What percentage of the students from {city} are female?",
            "female refers to gender = 'F'; percentage = DIVIDE(COUNT(gender = 'F'), "
            "COUNT(student_id)) * 100",
            "SELECT CAST(SUM(CASE WHEN gender = 'F' THEN 1 ELSE 0 END) AS REAL) * 100 / COUNT(*) "
            "FROM students WHERE city = :city",
            cities,
            limit=4,
        ),
        _Template(
            "challenging",
            "Which courses had more than {n} students enrolled in the {semester} semester? "
            "Give the course titles.",
            "",
            "SELECT T1.title FROM courses AS T1 INNER JOIN enrollments AS T2 "
            "ON T1.course_id = T2.course_id WHERE T2.semester = :semester GROUP BY T1.title "
            "HAVING COUNT(T2.student_id) > :n",
            lambda d: [{"semester": s, "n": n} for s in _SEMESTERS for n in (9, 11)],
        ),
        _Template(
            "challenging",
            "Among the students born after {year}, who took the most courses? Give the full name.",
            "born after {year} refers to birth_date > '{year}-12-31'; full name refers to "
            "first_name, last_name",
            "SELECT T1.first_name, T1.last_name FROM students AS T1 INNER JOIN enrollments AS T2 "
            "ON T1.student_id = T2.student_id WHERE T1.birth_date > :date GROUP BY T1.student_id "
            "ORDER BY COUNT(T2.course_id) DESC LIMIT :k",
            lambda d: [{"year": y, "date": f"{y}-12-31", "k": 1} for y in range(1998, 2006)],
            order_keys="SELECT COUNT(T2.course_id) FROM students AS T1 INNER JOIN enrollments "
            "AS T2 ON T1.student_id = T2.student_id WHERE T1.birth_date > :date "
            "GROUP BY T1.student_id ORDER BY COUNT(T2.course_id) DESC",
        ),
        _Template(
            "challenging",
            "How many students of the {dept} department never took a course of their own "
            "department?",
            "",
            "SELECT COUNT(*) FROM students AS S INNER JOIN departments AS D "
            "ON S.dept_id = D.dept_id WHERE D.name = :dept AND S.student_id NOT IN "
            "(SELECT E.student_id FROM enrollments AS E INNER JOIN courses AS C "
            "ON E.course_id = C.course_id WHERE C.dept_id = S.dept_id)",
            depts,
            limit=4,
        ),
    ]


# --------------------------------------------------------------------------- shop

_SHOP_DDL = [
    """CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    country TEXT NOT NULL,
    signup_date TEXT NOT NULL -- YYYY-MM-DD
)""",
    """CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL, -- in USD
    stock INTEGER NOT NULL
)""",
    """CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
    order_date TEXT NOT NULL, -- YYYY-MM-DD
    status TEXT NOT NULL -- 'shipped', 'pending' or 'cancelled'
)""",
    """CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    product_id INTEGER NOT NULL REFERENCES products(product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    PRIMARY KEY (order_id, product_id)
)""",
]

_PRODUCTS = {
    "Books": ["Atlas", "Cookbook", "Novel", "Poetry", "Dictionary", "Comic"],
    "Electronics": ["Headphones", "Keyboard", "Monitor", "Speaker", "Webcam", "Charger"],
    "Garden": ["Hose", "Shovel", "Planter", "Rake", "Sprinkler", "Gloves"],
    "Kitchen": ["Kettle", "Toaster", "Blender", "Pan", "Knife Set", "Grinder"],
    "Toys": ["Puzzle", "Kite", "Robot", "Train Set", "Yo-yo", "Board Game"],
}
_COUNTRIES = ["Brazil", "Canada", "France", "Germany", "India", "Japan", "Kenya", "Spain"]
_STATUSES = ["shipped", "shipped", "shipped", "pending", "cancelled"]


def _shop_rows(rng: random.Random) -> dict[str, list[Row]]:
    customers: list[Row] = []
    for c in range(1, 91):
        first, last = _name(rng)
        customers.append(
            (
                c,
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}{c}@example.com",
                rng.choice(_COUNTRIES),
                _date(rng, 2020, 2023),
            )
        )
    products: list[Row] = []
    cents = rng.sample(range(500, 30000), sum(len(v) for v in _PRODUCTS.values()))
    for category, names in _PRODUCTS.items():
        for name in names:
            price = cents[len(products)] / 100
            products.append((len(products) + 1, name, category, price, rng.randint(0, 200)))
    orders: list[Row] = []
    items: list[Row] = []
    for o in range(1, 321):
        orders.append(
            (o, rng.randint(1, len(customers)), _date(rng, 2022, 2024), rng.choice(_STATUSES))
        )
        for p in sorted(rng.sample(range(1, len(products) + 1), rng.randint(1, 4))):
            unit_price = products[p - 1][3]
            items.append((o, p, rng.randint(1, 5), unit_price))
    return {"customers": customers, "products": products, "orders": orders, "order_items": items}


def _shop_templates() -> list[_Template]:
    def countries(d: _Data) -> list[Params]:
        return [{"country": c} for c in d.column("customers", 3)]

    def categories(d: _Data) -> list[Params]:
        return [{"category": c} for c in d.column("products", 2)]

    def products(d: _Data) -> list[Params]:
        return [{"product": p} for p in d.column("products", 1)]

    def customers(d: _Data) -> list[Params]:
        return [{"customer": c} for c in d.column("customers", 1)]

    return [
        _Template(
            "simple",
            "How many customers are from {country}?",
            "",
            "SELECT COUNT(*) FROM customers WHERE country = :country",
            countries,
            limit=5,
        ),
        _Template(
            "simple",
            "List the names of the {category} products that cost less than {price} dollars.",
            "",
            "SELECT name FROM products WHERE category = :category AND price < :price",
            lambda d: [
                {"category": c["category"], "price": p} for c in categories(d) for p in (50, 100)
            ],
        ),
        _Template(
            "simple",
            "How many orders were {status} in {year}?",
            "{status} refers to status = '{status}'; in {year} refers to order_date LIKE '{year}%'",
            "SELECT COUNT(*) FROM orders WHERE status = :status AND order_date LIKE :pattern",
            lambda d: [
                {"status": s, "year": y, "pattern": f"{y}%"}
                for s in ("shipped", "pending", "cancelled")
                for y in (2022, 2023, 2024)
            ],
        ),
        _Template(
            "simple",
            "Which products are out of stock? Give their names.",
            "out of stock refers to stock = 0",
            "SELECT name FROM products WHERE stock = 0",
            lambda d: [{}],
        ),
        _Template(
            "simple",
            "What is the email address of the customer named {customer}?",
            "",
            "SELECT email FROM customers WHERE name = :customer",
            customers,
            limit=4,
        ),
        _Template(
            "simple",
            "What is the average price of the products in the {category} category?",
            "",
            "SELECT AVG(price) FROM products WHERE category = :category",
            categories,
            limit=4,
        ),
        _Template(
            "moderate",
            "How many orders did the customers from {country} place?",
            "",
            "SELECT COUNT(T2.order_id) FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id WHERE T1.country = :country",
            countries,
            limit=4,
        ),
        _Template(
            "moderate",
            "What are the {k} most expensive products? List their names and prices.",
            "",
            "SELECT name, price FROM products ORDER BY price DESC LIMIT :k",
            lambda d: [{"k": k} for k in (3, 5)],
            order_keys="SELECT price FROM products ORDER BY price DESC",
        ),
        _Template(
            "moderate",
            "How many units of {product} were sold in total in orders that were not cancelled?",
            "not cancelled refers to status <> 'cancelled'; units refers to quantity",
            "SELECT SUM(T1.quantity) FROM order_items AS T1 INNER JOIN orders AS T2 "
            "ON T1.order_id = T2.order_id INNER JOIN products AS T3 "
            "ON T1.product_id = T3.product_id WHERE T3.name = :product "
            "AND T2.status <> 'cancelled'",
            products,
        ),
        _Template(
            "moderate",
            "For each product category, what is the total quantity ordered? List the category "
            "and the quantity.",
            "",
            "SELECT T2.category, SUM(T1.quantity) FROM order_items AS T1 INNER JOIN products "
            "AS T2 ON T1.product_id = T2.product_id GROUP BY T2.category",
            lambda d: [{}],
        ),
        _Template(
            "moderate",
            "List the names of the products ordered by {customer}.",
            "",
            "SELECT DISTINCT T4.name FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id INNER JOIN order_items AS T3 "
            "ON T2.order_id = T3.order_id INNER JOIN products AS T4 "
            "ON T3.product_id = T4.product_id WHERE T1.name = :customer",
            customers,
        ),
        _Template(
            "moderate",
            "Which customer placed the most orders in {year}? Give the name.",
            "in {year} refers to order_date LIKE '{year}%'",
            "SELECT T1.name FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id WHERE T2.order_date LIKE :pattern "
            "GROUP BY T1.customer_id ORDER BY COUNT(T2.order_id) DESC LIMIT :k",
            lambda d: [{"year": y, "pattern": f"{y}%", "k": 1} for y in (2022, 2023, 2024)],
            order_keys="SELECT COUNT(T2.order_id) FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id WHERE T2.order_date LIKE :pattern "
            "GROUP BY T1.customer_id ORDER BY COUNT(T2.order_id) DESC",
        ),
        _Template(
            "challenging",
            "What is the total revenue of the shipped orders of customers from {country}?",
            "shipped refers to status = 'shipped'; revenue = SUM(quantity * unit_price)",
            "SELECT SUM(T3.quantity * T3.unit_price) FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id INNER JOIN order_items AS T3 "
            "ON T2.order_id = T3.order_id WHERE T1.country = :country AND T2.status = 'shipped'",
            countries,
            limit=5,
        ),
        _Template(
            "challenging",
            "Which customers spent more than {amount} dollars in total? Give their names.",
            "spent refers to SUM(quantity * unit_price) over all their orders that were not "
            "cancelled (status <> 'cancelled')",
            "SELECT T1.name FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id INNER JOIN order_items AS T3 "
            "ON T2.order_id = T3.order_id WHERE T2.status <> 'cancelled' "
            "GROUP BY T1.customer_id HAVING SUM(T3.quantity * T3.unit_price) > :amount",
            lambda d: [{"amount": a} for a in (3000, 4000, 5000)],
        ),
        _Template(
            "challenging",
            "What percentage of the orders placed in {year} were cancelled?",
            "in {year} refers to order_date LIKE '{year}%'; percentage = "
            "DIVIDE(COUNT(status = 'cancelled'), COUNT(order_id)) * 100",
            "SELECT CAST(SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END) AS REAL) * 100 "
            "/ COUNT(order_id) FROM orders WHERE order_date LIKE :pattern",
            lambda d: [{"year": y, "pattern": f"{y}%"} for y in (2022, 2023, 2024)],
        ),
        _Template(
            "challenging",
            "Which {category} products were never ordered by a customer from {country}? "
            "Give their names.",
            "",
            "SELECT name FROM products WHERE category = :category AND product_id NOT IN "
            "(SELECT T3.product_id FROM customers AS T1 INNER JOIN orders AS T2 "
            "ON T1.customer_id = T2.customer_id INNER JOIN order_items AS T3 "
            "ON T2.order_id = T3.order_id WHERE T1.country = :country)",
            lambda d: [
                {"category": c["category"], "country": k["country"]}
                for c in categories(d)
                for k in countries(d)
            ],
        ),
        _Template(
            "challenging",
            "Which products cost more than the average price of their own category? "
            "List the names of those in the {category} category.",
            "",
            "SELECT T1.name FROM products AS T1 WHERE T1.category = :category AND T1.price > "
            "(SELECT AVG(T2.price) FROM products AS T2 WHERE T2.category = T1.category)",
            categories,
            limit=3,
        ),
        _Template(
            "challenging",
            "How many days passed between the signup of {customer} and their first order?",
            "days passed = julianday(MIN(order_date)) - julianday(signup_date)",
            "SELECT julianday(MIN(T2.order_date)) - julianday(T1.signup_date) FROM customers "
            "AS T1 INNER JOIN orders AS T2 ON T1.customer_id = T2.customer_id "
            "WHERE T1.name = :customer",
            customers,
            limit=5,
        ),
    ]


# --------------------------------------------------------------------------- library

_LIBRARY_DDL = [
    """CREATE TABLE authors (
    author_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    nationality TEXT NOT NULL,
    birth_year INTEGER NOT NULL
)""",
    """CREATE TABLE books (
    book_id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    author_id INTEGER NOT NULL REFERENCES authors(author_id),
    genre TEXT NOT NULL,
    publish_year INTEGER NOT NULL,
    pages INTEGER NOT NULL
)""",
    """CREATE TABLE members (
    member_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    join_date TEXT NOT NULL, -- YYYY-MM-DD
    membership TEXT NOT NULL -- 'standard' or 'premium'
)""",
    """CREATE TABLE loans (
    loan_id INTEGER PRIMARY KEY,
    book_id INTEGER NOT NULL REFERENCES books(book_id),
    member_id INTEGER NOT NULL REFERENCES members(member_id),
    loan_date TEXT NOT NULL, -- YYYY-MM-DD
    return_date TEXT -- YYYY-MM-DD; NULL while the book is not returned
)""",
]

_GENRES = ["Fantasy", "History", "Mystery", "Poetry", "Romance", "Science"]
_NATIONALITIES = ["British", "Chilean", "French", "Japanese", "Nigerian", "Russian"]
_ADJ = [
    "Silent",
    "Hidden",
    "Golden",
    "Broken",
    "Distant",
    "Crimson",
    "Endless",
    "Quiet",
    "Wandering",
    "Frozen",
]
_NOUN = [
    "River",
    "Garden",
    "Empire",
    "Letters",
    "Mirror",
    "Harbour",
    "Forest",
    "Station",
    "Winter",
    "Orchard",
    "Tower",
]


def _library_rows(rng: random.Random) -> dict[str, list[Row]]:
    authors: list[Row] = []
    for a in range(1, 31):
        first, last = _name(rng)
        authors.append((a, f"{first} {last}", rng.choice(_NATIONALITIES), rng.randint(1900, 1990)))
    titles = [f"The {adj} {noun}" for adj in _ADJ for noun in _NOUN]
    rng.shuffle(titles)
    books: list[Row] = []
    for b in range(1, 101):
        author = rng.randint(1, len(authors))
        born = authors[author - 1][3]
        assert isinstance(born, int)
        books.append(
            (
                b,
                titles[b - 1],
                author,
                rng.choice(_GENRES),
                rng.randint(born + 25, 2023),
                rng.randint(90, 900),
            )
        )
    members: list[Row] = []
    for m in range(1, 61):
        first, last = _name(rng)
        members.append(
            (m, f"{first} {last}", _date(rng, 2018, 2023), rng.choice(["standard", "premium"]))
        )
    loans: list[Row] = []
    for loan in range(1, 401):
        year, month, day = rng.randint(2023, 2024), rng.randint(1, 12), rng.randint(1, 28)
        start = f"{year}-{month:02d}-{day:02d}"
        if rng.random() < 0.15:
            end: str | None = None
        else:
            end_month = month + rng.randint(0, 1)
            end_year = year + (end_month > 12)
            end_month = (end_month - 1) % 12 + 1
            end = f"{end_year}-{end_month:02d}-{rng.randint(1, 28):02d}"
            if end <= start:
                end = f"{year}-{month:02d}-28" if day < 28 else f"{year + 1}-01-15"
        loans.append((loan, rng.randint(1, len(books)), rng.randint(1, len(members)), start, end))
    return {"authors": authors, "books": books, "members": members, "loans": loans}


def _library_templates() -> list[_Template]:
    def genres(d: _Data) -> list[Params]:
        return [{"genre": g} for g in d.column("books", 3)]

    def nationalities(d: _Data) -> list[Params]:
        return [{"nationality": n} for n in d.column("authors", 2)]

    def authors(d: _Data) -> list[Params]:
        return [{"author": a} for a in d.column("authors", 1)]

    def members(d: _Data) -> list[Params]:
        return [{"member": m} for m in d.column("members", 1)]

    def books(d: _Data) -> list[Params]:
        return [{"title": t} for t in d.column("books", 1)]

    return [
        _Template(
            "simple",
            "How many {genre} books does the library have?",
            "",
            "SELECT COUNT(*) FROM books WHERE genre = :genre",
            genres,
            limit=4,
        ),
        _Template(
            "simple",
            "List the titles of the books published after {year} that have more than {pages} "
            "pages.",
            "",
            "SELECT title FROM books WHERE publish_year > :year AND pages > :pages",
            lambda d: [{"year": y, "pages": p} for y in (2000, 2010) for p in (500, 700)],
        ),
        _Template(
            "simple",
            "Which {nationality} authors were born before {year}? Give their names.",
            "",
            "SELECT name FROM authors WHERE nationality = :nationality AND birth_year < :year",
            lambda d: [
                {"nationality": n["nationality"], "year": y}
                for n in nationalities(d)
                for y in (1940, 1960)
            ],
        ),
        _Template(
            "simple",
            "How many loans have not been returned yet?",
            "not returned refers to return_date IS NULL",
            "SELECT COUNT(*) FROM loans WHERE return_date IS NULL",
            lambda d: [{}],
        ),
        _Template(
            "simple",
            "How many premium members joined in {year}?",
            "premium refers to membership = 'premium'; joined in {year} refers to "
            "join_date LIKE '{year}%'",
            "SELECT COUNT(*) FROM members WHERE membership = 'premium' AND join_date LIKE :pattern",
            lambda d: [{"year": y, "pattern": f"{y}%"} for y in range(2018, 2024)],
            limit=4,
        ),
        _Template(
            "simple",
            "In which year was the book {title} published, and how many pages does it have?",
            "",
            "SELECT publish_year, pages FROM books WHERE title = :title",
            books,
            limit=4,
        ),
        _Template(
            "moderate",
            "List the titles of the books written by {author}.",
            "",
            "SELECT T2.title FROM authors AS T1 INNER JOIN books AS T2 "
            "ON T1.author_id = T2.author_id WHERE T1.name = :author",
            authors,
        ),
        _Template(
            "moderate",
            "How many times was the book {title} borrowed?",
            "",
            "SELECT COUNT(T2.loan_id) FROM books AS T1 INNER JOIN loans AS T2 "
            "ON T1.book_id = T2.book_id WHERE T1.title = :title",
            books,
            limit=4,
        ),
        _Template(
            "moderate",
            "Which {k} books have the most pages? Give the titles and the authors' names.",
            "",
            "SELECT T1.title, T2.name FROM books AS T1 INNER JOIN authors AS T2 "
            "ON T1.author_id = T2.author_id ORDER BY T1.pages DESC LIMIT :k",
            lambda d: [{"k": k} for k in (3, 5)],
            order_keys="SELECT pages FROM books ORDER BY pages DESC",
        ),
        _Template(
            "moderate",
            "For each genre, how many books were written by {nationality} authors? List the "
            "genre and the number of books.",
            "",
            "SELECT T2.genre, COUNT(T2.book_id) FROM authors AS T1 INNER JOIN books AS T2 "
            "ON T1.author_id = T2.author_id WHERE T1.nationality = :nationality "
            "GROUP BY T2.genre",
            nationalities,
            limit=3,
        ),
        _Template(
            "moderate",
            "Which books did {member} borrow in {year}? Give the titles.",
            "in {year} refers to loan_date LIKE '{year}%'",
            "SELECT T3.title FROM members AS T1 INNER JOIN loans AS T2 "
            "ON T1.member_id = T2.member_id INNER JOIN books AS T3 ON T2.book_id = T3.book_id "
            "WHERE T1.name = :member AND T2.loan_date LIKE :pattern",
            lambda d: [
                {"member": m["member"], "year": y, "pattern": f"{y}%"}
                for m in members(d)
                for y in (2023, 2024)
            ],
        ),
        _Template(
            "moderate",
            "Which {genre} book was borrowed the most? Give the title.",
            "",
            "SELECT T1.title FROM books AS T1 INNER JOIN loans AS T2 ON T1.book_id = T2.book_id "
            "WHERE T1.genre = :genre GROUP BY T1.book_id ORDER BY COUNT(T2.loan_id) DESC "
            "LIMIT :k",
            lambda d: [{"genre": g["genre"], "k": 1} for g in genres(d)],
            order_keys="SELECT COUNT(T2.loan_id) FROM books AS T1 INNER JOIN loans AS T2 "
            "ON T1.book_id = T2.book_id WHERE T1.genre = :genre GROUP BY T1.book_id "
            "ORDER BY COUNT(T2.loan_id) DESC",
        ),
        _Template(
            "challenging",
            "Which authors wrote more than {n_books} of the {genre} genre? Give their names.",
            "",
            "SELECT T1.name FROM authors AS T1 INNER JOIN books AS T2 "
            "ON T1.author_id = T2.author_id WHERE T2.genre = :genre GROUP BY T1.author_id "
            "HAVING COUNT(T2.book_id) > :n",
            lambda d: [
                {"genre": g["genre"], "n": n, "n_books": w}
                for g in genres(d)
                for n, w in ((1, "one book"), (2, "two books"))
            ],
        ),
        _Template(
            "challenging",
            "What is the average loan duration, in days, of the {genre} books?",
            "loan duration = julianday(return_date) - julianday(loan_date); only returned "
            "loans count (return_date IS NOT NULL)",
            "SELECT AVG(julianday(T2.return_date) - julianday(T2.loan_date)) FROM books AS T1 "
            "INNER JOIN loans AS T2 ON T1.book_id = T2.book_id WHERE T1.genre = :genre "
            "AND T2.return_date IS NOT NULL",
            genres,
            limit=4,
        ),
        _Template(
            "challenging",
            "Which members borrowed a book written by {author}? Give their names.",
            "",
            "SELECT DISTINCT T4.name FROM authors AS T1 INNER JOIN books AS T2 "
            "ON T1.author_id = T2.author_id INNER JOIN loans AS T3 ON T2.book_id = T3.book_id "
            "INNER JOIN members AS T4 ON T3.member_id = T4.member_id WHERE T1.name = :author",
            authors,
        ),
        _Template(
            "challenging",
            "What percentage of the loans made by {membership} members in {year} have not been "
            "returned?",
            "{membership} refers to membership = '{membership}'; in {year} refers to "
            "loan_date LIKE '{year}%'; not returned refers to return_date IS NULL; percentage = "
            "DIVIDE(COUNT(return_date IS NULL), COUNT(loan_id)) * 100",
            "SELECT CAST(SUM(CASE WHEN T2.return_date IS NULL THEN 1 ELSE 0 END) AS REAL) * 100 "
            "/ COUNT(T2.loan_id) FROM members AS T1 INNER JOIN loans AS T2 "
            "ON T1.member_id = T2.member_id WHERE T1.membership = :membership "
            "AND T2.loan_date LIKE :pattern",
            lambda d: [
                {"membership": m, "year": y, "pattern": f"{y}%"}
                for m in ("standard", "premium")
                for y in (2023, 2024)
            ],
        ),
        _Template(
            "challenging",
            "Which books by {nationality} authors have never been borrowed? Give the titles.",
            "",
            "SELECT T2.title FROM authors AS T1 INNER JOIN books AS T2 "
            "ON T1.author_id = T2.author_id WHERE T1.nationality = :nationality "
            "AND T2.book_id NOT IN (SELECT book_id FROM loans)",
            nationalities,
        ),
        _Template(
            "challenging",
            "How old was {author} when their first book was published?",
            "age = MIN(publish_year) - birth_year",
            "SELECT MIN(T2.publish_year) - T1.birth_year FROM authors AS T1 INNER JOIN books "
            "AS T2 ON T1.author_id = T2.author_id WHERE T1.name = :author",
            authors,
            limit=4,
        ),
    ]


# --------------------------------------------------------------------------- flights

_FLIGHTS_DDL = [
    """CREATE TABLE airports (
    code TEXT PRIMARY KEY, -- IATA code
    city TEXT NOT NULL,
    country TEXT NOT NULL
)""",
    """CREATE TABLE airlines (
    airline_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL
)""",
    """CREATE TABLE flights (
    flight_id INTEGER PRIMARY KEY,
    airline_id INTEGER NOT NULL REFERENCES airlines(airline_id),
    origin TEXT NOT NULL REFERENCES airports(code),
    destination TEXT NOT NULL REFERENCES airports(code),
    departure TEXT NOT NULL, -- YYYY-MM-DD HH:MM
    duration_min INTEGER NOT NULL,
    price REAL NOT NULL, -- economy fare in USD
    status TEXT NOT NULL -- 'on time', 'delayed' or 'cancelled'
)""",
    """CREATE TABLE bookings (
    booking_id INTEGER PRIMARY KEY,
    flight_id INTEGER NOT NULL REFERENCES flights(flight_id),
    passenger TEXT NOT NULL,
    seat_class TEXT NOT NULL -- 'economy' or 'business'
)""",
]

_AIRPORTS = [
    ("AMS", "Amsterdam", "Netherlands"),
    ("BCN", "Barcelona", "Spain"),
    ("CDG", "Paris", "France"),
    ("FRA", "Frankfurt", "Germany"),
    ("HND", "Tokyo", "Japan"),
    ("JFK", "New York", "United States"),
    ("LHR", "London", "United Kingdom"),
    ("MAD", "Madrid", "Spain"),
    ("NRT", "Tokyo", "Japan"),
    ("ORD", "Chicago", "United States"),
    ("SFO", "San Francisco", "United States"),
    ("YYZ", "Toronto", "Canada"),
]
_AIRLINES = [
    ("Aurora Air", "Canada"),
    ("Blue Heron", "United States"),
    ("Cielo", "Spain"),
    ("Dragonfly", "Japan"),
    ("Eurowings Star", "Germany"),
    ("Fjord Express", "Netherlands"),
    ("Gallic Wings", "France"),
]
_FLIGHT_STATUSES = ["on time", "on time", "on time", "delayed", "cancelled"]


def _flights_rows(rng: random.Random) -> dict[str, list[Row]]:
    airports: list[Row] = list(_AIRPORTS)
    airlines: list[Row] = [(i, n, c) for i, (n, c) in enumerate(_AIRLINES, start=1)]
    flights: list[Row] = []
    codes = [a[0] for a in _AIRPORTS]
    for f in range(1, 261):
        origin, destination = rng.sample(codes, 2)
        departure = (
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(5, 22):02d}:{rng.choice([0, 15, 30, 45]):02d}"
        )
        flights.append(
            (
                f,
                rng.randint(1, len(airlines)),
                origin,
                destination,
                departure,
                rng.randint(50, 800),
                rng.randint(4000, 150000) / 100,
                rng.choice(_FLIGHT_STATUSES),
            )
        )
    bookings: list[Row] = []
    for b in range(1, 801):
        first, last = _name(rng)
        seat = "business" if rng.random() < 0.2 else "economy"
        bookings.append((b, rng.randint(1, len(flights)), f"{first} {last}", seat))
    return {"airports": airports, "airlines": airlines, "flights": flights, "bookings": bookings}


def _flights_templates() -> list[_Template]:
    def airlines(d: _Data) -> list[Params]:
        return [{"airline": a} for a in d.column("airlines", 1)]

    def cities(d: _Data) -> list[Params]:
        return [{"city": c} for c in d.column("airports", 1)]

    def codes(d: _Data) -> list[Params]:
        return [{"code": c} for c in d.column("airports", 0)]

    def months() -> list[tuple[str, str]]:
        names = "January February March April May June July August September October "
        names += "November December"
        return [(f"{i:02d}", n) for i, n in enumerate(names.split(), start=1)]

    return [
        _Template(
            "simple",
            "How many flights departed from {code}?",
            "departed from {code} refers to origin = '{code}'",
            "SELECT COUNT(*) FROM flights WHERE origin = :code",
            codes,
            limit=4,
        ),
        _Template(
            "simple",
            "List the ids of the {status} flights from {origin} to {destination}.",
            "",
            "SELECT flight_id FROM flights WHERE origin = :origin AND destination = :destination "
            "AND status = :status",
            lambda d: [
                {"origin": o, "destination": t, "status": s}
                for o in d.column("airports", 0)
                for t in d.column("airports", 0)
                for s in ("on time", "delayed")
                if o != t
            ],
        ),
        _Template(
            "simple",
            "How many flights in {month_name} 2024 lasted longer than {hours} hours?",
            "in {month_name} 2024 refers to departure LIKE '2024-{month}%'; longer than {hours} "
            "hours refers to duration_min > {minutes}",
            "SELECT COUNT(*) FROM flights WHERE departure LIKE :pattern "
            "AND duration_min > :minutes",
            lambda d: [
                {
                    "month": m,
                    "month_name": n,
                    "hours": h,
                    "minutes": h * 60,
                    "pattern": f"2024-{m}%",
                }
                for m, n in months()
                for h in (6, 10)
            ],
        ),
        _Template(
            "simple",
            "Which airports are in {country}? Give their codes.",
            "",
            "SELECT code FROM airports WHERE country = :country",
            lambda d: [{"country": c} for c in d.column("airports", 2)],
            limit=3,
        ),
        _Template(
            "simple",
            "What is the cheapest fare of a flight from {origin} that was not cancelled?",
            "fare refers to price; not cancelled refers to status <> 'cancelled'",
            "SELECT MIN(price) FROM flights WHERE origin = :origin AND status <> 'cancelled'",
            lambda d: [{"origin": c["code"]} for c in codes(d)],
            limit=4,
        ),
        _Template(
            "moderate",
            "How many flights did {airline} operate to {city}?",
            "",
            "SELECT COUNT(*) FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id INNER JOIN airports AS T3 "
            "ON T1.destination = T3.code WHERE T2.name = :airline AND T3.city = :city",
            lambda d: [
                {"airline": a["airline"], "city": c["city"]} for a in airlines(d) for c in cities(d)
            ],
        ),
        _Template(
            "moderate",
            "Which {k} flights of {airline} were the longest? Give the flight ids and durations.",
            "",
            "SELECT T1.flight_id, T1.duration_min FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id WHERE T2.name = :airline "
            "ORDER BY T1.duration_min DESC LIMIT :k",
            lambda d: [{"airline": a["airline"], "k": 3} for a in airlines(d)],
            limit=4,
            order_keys="SELECT T1.duration_min FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id WHERE T2.name = :airline "
            "ORDER BY T1.duration_min DESC",
        ),
        _Template(
            "moderate",
            "For each airline, how many of its flights were delayed? List the airline name and "
            "the count.",
            "delayed refers to status = 'delayed'",
            "SELECT T2.name, COUNT(T1.flight_id) FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id WHERE T1.status = 'delayed' GROUP BY T2.name",
            lambda d: [{}],
        ),
        _Template(
            "moderate",
            "Who booked a {seat_class} seat on a flight departing from {city}? Give the "
            "passenger names.",
            "",
            "SELECT T1.passenger FROM bookings AS T1 INNER JOIN flights AS T2 "
            "ON T1.flight_id = T2.flight_id INNER JOIN airports AS T3 ON T2.origin = T3.code "
            "WHERE T1.seat_class = :seat_class AND T3.city = :city",
            lambda d: [{"seat_class": "business", "city": c["city"]} for c in cities(d)],
        ),
        _Template(
            "moderate",
            "Which destination city received the most flights of {airline}?",
            "",
            "SELECT T3.city FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id INNER JOIN airports AS T3 "
            "ON T1.destination = T3.code WHERE T2.name = :airline GROUP BY T3.city "
            "ORDER BY COUNT(T1.flight_id) DESC LIMIT :k",
            lambda d: [{"airline": a["airline"], "k": 1} for a in airlines(d)],
            order_keys="SELECT COUNT(T1.flight_id) FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id INNER JOIN airports AS T3 "
            "ON T1.destination = T3.code WHERE T2.name = :airline GROUP BY T3.city "
            "ORDER BY COUNT(T1.flight_id) DESC",
        ),
        _Template(
            "challenging",
            "What percentage of the flights of {airline} were cancelled?",
            "percentage = DIVIDE(COUNT(status = 'cancelled'), COUNT(flight_id)) * 100",
            "SELECT CAST(SUM(CASE WHEN T1.status = 'cancelled' THEN 1 ELSE 0 END) AS REAL) * 100 "
            "/ COUNT(T1.flight_id) FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id WHERE T2.name = :airline",
            airlines,
            limit=4,
        ),
        _Template(
            "challenging",
            "Which airlines have an average fare above {price} dollars on flights to "
            "{country}? Give their names.",
            "fare refers to price",
            "SELECT T2.name FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id INNER JOIN airports AS T3 "
            "ON T1.destination = T3.code WHERE T3.country = :country GROUP BY T2.name "
            "HAVING AVG(T1.price) > :price",
            lambda d: [
                {"country": c, "price": p} for c in d.column("airports", 2) for p in (700, 800)
            ],
        ),
        _Template(
            "challenging",
            "Which flights from {origin} cost more than the average fare of all flights from "
            "{origin}? Give the flight ids.",
            "fare refers to price",
            "SELECT flight_id FROM flights WHERE origin = :origin AND price > "
            "(SELECT AVG(price) FROM flights WHERE origin = :origin)",
            lambda d: [{"origin": c["code"]} for c in codes(d)],
            limit=4,
        ),
        _Template(
            "challenging",
            "How many bookings are there for flights that departed in {month_name} 2024 from "
            "an airport outside the home country of the operating airline?",
            "outside the home country refers to airports.country <> airlines.country, where "
            "airports is the origin airport; in {month_name} 2024 refers to "
            "departure LIKE '2024-{month}%'",
            "SELECT COUNT(T1.booking_id) FROM bookings AS T1 INNER JOIN flights AS T2 "
            "ON T1.flight_id = T2.flight_id INNER JOIN airlines AS T3 "
            "ON T2.airline_id = T3.airline_id INNER JOIN airports AS T4 ON T2.origin = T4.code "
            "WHERE T4.country <> T3.country AND T2.departure LIKE :pattern",
            lambda d: [{"month": m, "month_name": n, "pattern": f"2024-{m}%"} for m, n in months()],
            limit=4,
        ),
        _Template(
            "challenging",
            "On which routes did {airline} fly more than once? Give origin and destination.",
            "",
            "SELECT T1.origin, T1.destination FROM flights AS T1 INNER JOIN airlines AS T2 "
            "ON T1.airline_id = T2.airline_id WHERE T2.name = :airline "
            "GROUP BY T1.origin, T1.destination HAVING COUNT(*) > :n",
            lambda d: [{"airline": a["airline"], "n": 1} for a in airlines(d)],
        ),
        _Template(
            "challenging",
            "What is the arrival time of flight {flight_id}?",
            "arrival time = departure + duration_min minutes, written as YYYY-MM-DD HH:MM; "
            "use strftime('%Y-%m-%d %H:%M', departure, '+' || duration_min || ' minutes')",
            "SELECT strftime('%Y-%m-%d %H:%M', departure, '+' || duration_min || ' minutes') "
            "FROM flights WHERE flight_id = :flight_id",
            lambda d: [{"flight_id": f} for f in range(1, 261)],
            limit=4,
        ),
    ]


# --------------------------------------------------------------------------- assembly

_DOMAINS: dict[str, tuple[int, list[str], Callable[[random.Random], dict[str, list[Row]]]]] = {
    "school": (101, _SCHOOL_DDL, _school_rows),
    "shop": (202, _SHOP_DDL, _shop_rows),
    "library": (303, _LIBRARY_DDL, _library_rows),
    "flights": (404, _FLIGHTS_DDL, _flights_rows),
}
_TEMPLATES: dict[str, Callable[[], list[_Template]]] = {
    "school": _school_templates,
    "shop": _shop_templates,
    "library": _library_templates,
    "flights": _flights_templates,
}
#: The built-in databases, in task order.
DB_IDS: tuple[str, ...] = tuple(_DOMAINS)
_QUESTION_SEED = 20250917


def _literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("'", "''")
    return f"'{text}'"


_PLACEHOLDER = re.compile(r":([A-Za-z_]\w*)")


def _bind(sql: str, params: Params) -> str:
    return _PLACEHOLDER.sub(lambda m: _literal(params[m.group(1)]), sql)


@functools.cache
def _rows(db_id: str) -> dict[str, list[Row]]:
    seed, _, make = _DOMAINS[db_id]
    return make(random.Random(seed))


@functools.cache
def database_dump(db_id: str) -> str:
    """The SQL script (schema, then ``INSERT`` rows) that builds database ``db_id``."""
    _, ddl, _ = _DOMAINS[db_id]
    lines = [stmt + ";" for stmt in ddl]
    for table, rows in _rows(db_id).items():
        for row in rows:
            lines.append(f"INSERT INTO {table} VALUES ({', '.join(_literal(v) for v in row)});")
    return "\n".join(lines) + "\n"


def _memory_db(db_id: str) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.executescript(database_dump(db_id))
    return conn


def _acceptable(rows: Sequence[Row]) -> bool:
    if not rows:
        return False
    if all(v is None for row in rows for v in row):
        return False
    return not (len(rows) == 1 and rows[0] in ((0,), (0.0,)))


def _no_tie(conn: sqlite3.Connection, template: _Template, params: Params) -> bool:
    if template.order_keys is None:
        return True
    k = params["k"]
    assert isinstance(k, int)
    keys = [r[0] for r in conn.execute(_bind(template.order_keys, params)).fetchall()]
    return len(keys) >= k and (len(keys) == k or keys[k - 1] != keys[k])


def _questions_of(db_id: str, rng: random.Random) -> list[GeneratedQuestion]:
    data = _Data(_rows(db_id))
    conn = _memory_db(db_id)
    out: list[GeneratedQuestion] = []
    seen: set[str] = set()
    try:
        for template in _TEMPLATES[db_id]():
            candidates = template.params(data)
            rng.shuffle(candidates)
            kept = 0
            for params in candidates:
                if kept >= template.limit:
                    break
                question = template.question.format(**params)
                if question in seen:
                    continue
                sql = _bind(template.sql, params)
                if not _acceptable(conn.execute(sql).fetchall()):
                    continue
                if not _no_tie(conn, template, params):
                    continue
                seen.add(question)
                kept += 1
                out.append(
                    GeneratedQuestion(
                        db_id=db_id,
                        question=question,
                        evidence=template.evidence.format(**params),
                        sql=sql,
                        difficulty=template.difficulty,
                    )
                )
    finally:
        conn.close()
    return out


@functools.cache
def generate_questions() -> tuple[GeneratedQuestion, ...]:
    """Every built-in question, in task-id order (deterministic)."""
    rng = random.Random(_QUESTION_SEED)
    questions: list[GeneratedQuestion] = []
    for db_id in DB_IDS:
        questions.extend(_questions_of(db_id, rng))
    return tuple(questions)


def dump_digest(db_id: str) -> str:
    """A short sha256 digest of :func:`database_dump` (names the cached database file)."""
    return hashlib.sha256(database_dump(db_id).encode()).hexdigest()[:16]
