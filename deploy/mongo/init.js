// book_db_mongo: a one-node replica set (the Debezium MongoDB connector reads change
// streams, which need one) and the catalogue. Idempotent: run by the compose service
// mongo-init with mongosh.
try {
  rs.status();
} catch (e) {
  rs.initiate({ _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] });
}
let tries = 0;
while (!db.hello().isWritablePrimary && tries++ < 60) {
  sleep(1000);
}
const books = db.getSiblingDB("book_db").books;
const seed = [
  { _id: ObjectId("000000000000000000000001"), title: "Dune", author: "Frank Herbert", publisher: "Chilton", year: 1965, category: "scifi" },
  { _id: ObjectId("000000000000000000000002"), title: "Emma", author: "Jane Austen", publisher: "John Murray", year: 1815, category: "classic" },
  { _id: ObjectId("000000000000000000000003"), title: "Ubik", author: "Philip K. Dick", publisher: "Doubleday", year: 1969, category: "scifi" },
];
for (const b of seed) {
  books.updateOne({ _id: b._id }, { $setOnInsert: b }, { upsert: true });
}
print("book_db ready: " + books.countDocuments() + " books");
